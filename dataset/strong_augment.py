"""The strong view of MLKD's weak/strong pair (Jin et al., CVPR 2023), batched on the device and
pixel-identical to the authors' PIL pipeline for the same random draws.

The authors' strong transform (``get_cifar100_train_transform_strong`` in
Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/dataset/cifar100.py``, commit 5ee473f; the
same file in sunshangquan/logit-standardization-KD) is the weak view's padded random crop and
horizontal flip, drawn anew, then FixMatch's RandAugment: two operations drawn with replacement
from :data:`OPS`, each with a magnitude uniform in its range, then Cutout, a square of side
``u * 0.5 * W`` (``u`` uniform in [0, 1)) filled with (125, 123, 114), whose corner lies half a
side up-left of a point drawn with ``np.random.uniform(W)`` (uniform in ``(1, W]``: NumPy's
``uniform(low=W, high=1)``), then ``ToTensor`` and ``Normalize``.

The operations are Pillow's on the uint8 image (Pillow's C code, whose arithmetic is replicated
here): lookup tables (AutoContrast, Equalize, Posterize, Solarize), blends with a degenerate
image (Brightness, Color, Contrast, Sharpness: ``trunc(d + f * (x - d))`` in float32), and
nearest-neighbour affine resampling (Rotate, ShearX/Y: 16.16 fixed point; TranslateX/Y: Pillow's
scaling path, sampled at pixel centres). Each image has exactly one operation per round, so a
round is three batched stages — resample, table lookup, blend — each the identity for the
images whose operation is of another kind: a few large kernels per batch, none per image.

The draws of an epoch (:class:`StrongPlan`) are made on the host from a seeded generator, where
the resampling coefficients are computed with Python's float arithmetic exactly as Pillow
computes them (``Image.rotate`` rounds its matrix with ``round(x, 15)``), and moved to the
device once per epoch. :func:`strong_view_pil` applies the same draws with Pillow itself (the
torchvision loader's strong view; the equivalence test compares the two pixel for pixel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

#: RandAugment's operations and magnitude ranges, in the authors' order (the order their
#: ``random.choices`` draws from): ``(name, low, high)``.
OPS: tuple[tuple[str, float, float], ...] = (
    ("AutoContrast", 0, 1), ("Brightness", 0.05, 0.95), ("Color", 0.05, 0.95), ("Contrast", 0.05, 0.95),
    ("Equalize", 0, 1), ("Identity", 0, 1), ("Posterize", 4, 8), ("Rotate", -30, 30),
    ("Sharpness", 0.05, 0.95), ("ShearX", -0.3, 0.3), ("ShearY", -0.3, 0.3), ("Solarize", 0, 256),
    ("TranslateX", -0.3, 0.3), ("TranslateY", -0.3, 0.3))
OP_INDEX = {name: k for k, (name, _, _) in enumerate(OPS)}
#: Operations per image (RandAugment's ``n``).
ROUNDS = 2
#: Cutout's fill colour and the largest side, as a fraction of the width.
CUTOUT_FILL = (125, 123, 114)
CUTOUT_MAX = 0.5
#: ImageOps.equalize's divisor of the pixel count (255 in Pillow 13, the version tested against;
#: older releases divided by 256)
EQUALIZE_LEVELS = 255
#: Pillow's SMOOTH kernel (Sharpness's degenerate image): 3x3 ones with 5 at the centre, over 13.
SMOOTH_CENTRE, SMOOTH_SCALE = 5.0, 13.0


# ----------------------------------------------------------------------------- the draws

@dataclass(frozen=True)
class StrongPlan:
    """The strong view's draws for N images (host or device tensors).

    ``crop_offsets`` (N, 2) and ``flip_mask`` (N,): its own crop and flip; ``ops`` (N, 2) indices
    into :data:`OPS`; ``magnitudes`` (N, 2) float64; ``cutout`` (N, 3) float64: Cutout's fraction
    ``u * 0.5`` and its centre draws ``x, y`` in ``(1, W]``, ``(1, H]``. Derived on the host
    (:func:`resampling`): ``affine`` (N, 2, 6) int64, the 16.16 coefficients of Pillow's
    fixed-point resampling; ``scaled`` (N, 2) bool, where Pillow takes its scaling path instead
    (translations, and operations that do not resample); ``scale_cols`` (N, 2, W) and
    ``scale_rows`` (N, 2, H) int16, that path's source columns and rows (-1 or beyond the image
    where it fills).
    """

    crop_offsets: Tensor
    flip_mask: Tensor
    ops: Tensor
    magnitudes: Tensor
    cutout: Tensor
    affine: Tensor
    scaled: Tensor
    scale_cols: Tensor
    scale_rows: Tensor

    def __len__(self) -> int:
        return len(self.ops)

    def select(self, index: Tensor | slice) -> "StrongPlan":
        """The plan of the images at ``index`` (positions of the epoch)."""
        return StrongPlan(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device | str) -> "StrongPlan":
        return StrongPlan(*(getattr(self, f.name).to(device) for f in fields(self)))


def rotation_terms(angle: float) -> tuple[float, float, float]:
    """``cos``, ``sin`` and ``-sin`` of Pillow's ``Image.rotate(angle)`` inverse matrix: of
    ``-radians(angle % 360)``, each rounded to 15 decimals, in Python floats as Pillow."""
    radians = -math.radians(angle % 360.0)
    return round(math.cos(radians), 15), round(math.sin(radians), 15), round(-math.sin(radians), 15)


def _fix(v: np.ndarray) -> np.ndarray:
    """Pillow's ``FIX``: ``floor(v * 65536 + 0.5)``, in float64 as its C code."""
    return np.floor(v * 65536.0 + 0.5).astype(np.int64)


def fixed_coefficients(m: np.ndarray) -> np.ndarray:
    """The 16.16 coefficients of Pillow's ``affine_fixed`` for inverse matrices ``m`` (..., 6): the
    source of output pixel (x, y) is ``((a2 + y*a1 + x*a0) >> 16, (a5 + y*a4 + x*a3) >> 16)``."""
    a = [m[..., k] for k in range(6)]
    return np.stack([_fix(a[0]), _fix(a[1]), _fix(a[2] + a[0] * 0.5 + a[1] * 0.5),
                     _fix(a[3]), _fix(a[4]), _fix(a[5] + a[3] * 0.5 + a[4] * 0.5)], axis=-1)


def scale_sources(start: np.ndarray, step: np.ndarray, n: int) -> np.ndarray:
    """Pillow's scaling path along one axis: the source index of each of ``n`` outputs, from the
    float64 position ``start`` advanced by ``step`` at each output (accumulated one addition at a
    time, as Pillow does), -1 where the position is negative (rows: one per ``start``)."""
    positions = np.empty((n, len(start)))
    positions[0] = start
    for k in range(1, n):
        positions[k] = positions[k - 1] + step
    return np.where(positions < 0.0, -1, np.trunc(np.clip(positions, 0.0, 2.0 ** 14))).astype(np.int16).T


def inverse_matrices(ops: np.ndarray, magnitudes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(..., 6) float64: the inverse affine matrix Pillow resamples with for each drawn operation
    (the identity for the operations that do not resample, and for Pillow's copy at angle 0)."""
    m = np.zeros((*ops.shape, 6))
    m[..., 0] = m[..., 4] = 1.0
    v = magnitudes
    for name, k, value in (("ShearX", 1, v), ("ShearY", 3, v), ("TranslateX", 2, v * width),
                           ("TranslateY", 5, v * height)):
        chosen = ops == OP_INDEX[name]
        m[..., k] = np.where(chosen, value, m[..., k])
    rotate = (ops == OP_INDEX["Rotate"]) & (v % 360.0 != 0)  # at angle 0 Pillow copies
    cos, sin, minus_sin = np.array([rotation_terms(a) for a in v[rotate].tolist()]).reshape(-1, 3).T
    cx, cy = width / 2, height / 2  # the centre; the translation that rotates about it:
    m[rotate] = np.stack([cos, sin, cos * -cx + sin * -cy + 0.0 + cx, minus_sin,
                          cos, minus_sin * -cx + cos * -cy + 0.0 + cy], axis=1)
    return m


def resampling(ops: np.ndarray, magnitudes: np.ndarray, width: int, height: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``affine``, ``scaled``, ``scale_cols`` and ``scale_rows`` of :class:`StrongPlan` for the
    draws ``ops``, ``magnitudes`` (N, R): Pillow takes its scaling path for a matrix without cross
    terms (``a1 == a3 == 0``: the translations, and the identity), else its fixed-point path."""
    n, rounds = ops.shape
    m = inverse_matrices(ops, magnitudes, width, height)
    scaled = (m[..., 1] == 0) & (m[..., 3] == 0)
    cols, rows = np.empty((n, rounds, width), np.int16), np.empty((n, rounds, height), np.int16)
    cols[...], rows[...] = np.arange(width), np.arange(height)  # the identity's
    moved = scaled & ((m[..., 2] != 0) | (m[..., 5] != 0) | (m[..., 0] != 1) | (m[..., 4] != 1))
    a0, a2, a4, a5 = (m[..., k][moved] for k in (0, 2, 4, 5))
    cols[moved] = scale_sources(a2 + a0 * 0.5, a0, width)
    rows[moved] = scale_sources(a5 + a4 * 0.5, a4, height)
    return fixed_coefficients(m), scaled, cols, rows


def draw_rand_augment(n: int, generator: torch.Generator, height: int, width: int
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """RandAugment's and Cutout's draws for ``n`` images from ``generator`` (a CPU generator),
    with the authors' distributions: ``ops``, ``magnitudes`` and ``cutout`` of :class:`StrongPlan`."""
    ops = torch.randint(0, len(OPS), (n, ROUNDS), generator=generator)
    u = torch.rand(n, ROUNDS, generator=generator, dtype=torch.float64)
    low = torch.tensor([lo for _, lo, _ in OPS], dtype=torch.float64)[ops]
    high = torch.tensor([hi for _, _, hi in OPS], dtype=torch.float64)[ops]
    magnitudes = low + (high - low) * u
    c = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    size = torch.tensor([float(width), float(height)], dtype=torch.float64)
    cutout = torch.cat([c[:, :1] * CUTOUT_MAX, size + (1.0 - size) * c[:, 1:]], dim=1)
    return ops, magnitudes, cutout


def draw_strong_plan(n: int, generator: torch.Generator, height: int, width: int, padding: int = 4,
                     flip: bool = True) -> StrongPlan:
    """The strong view's draws for ``n`` images from ``generator`` (a CPU generator), on the host:
    its own crop and flip, then :func:`draw_rand_augment`, and Pillow's resampling coefficients."""
    crop = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    ops, magnitudes, cutout = draw_rand_augment(n, generator, height, width)
    derived = resampling(ops.numpy(), magnitudes.numpy(), width, height)
    return StrongPlan(crop, flips, ops, magnitudes, cutout, *(torch.from_numpy(a) for a in derived))


# ----------------------------------------------------------------------------- batched on the device

def _is(ops: Tensor, *names: str) -> Tensor:
    """(B,) bool: the images whose operation is one of ``names``."""
    out = torch.zeros_like(ops, dtype=torch.bool)
    for name in names:
        out |= ops == OP_INDEX[name]
    return out


def resample(x: Tensor, affine: Tensor, scaled: Tensor, cols: Tensor, rows: Tensor) -> Tensor:
    """Nearest-neighbour resampling of uint8 (B, C, H, W) with each image's source map: Pillow's
    fixed-point path (``affine`` (B, 6)) or, where ``scaled`` (B,), its scaling path (``cols``
    (B, W), ``rows`` (B, H)); pixels whose source lies outside are 0."""
    b, c, h, w = x.shape
    dev = x.device
    ys = torch.arange(h, device=dev, dtype=torch.int64)[None, :, None]
    xs = torch.arange(w, device=dev, dtype=torch.int64)[None, None, :]
    a = [affine[:, k, None, None] for k in range(6)]
    src_x = (a[2] + ys * a[1] + xs * a[0]) >> 16
    src_y = (a[5] + ys * a[4] + xs * a[3]) >> 16
    scale = scaled[:, None, None]
    src_x = torch.where(scale, cols.long()[:, None, :].expand(b, h, w), src_x)
    src_y = torch.where(scale, rows.long()[:, :, None].expand(b, h, w), src_y)
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    flat = torch.where(inside, src_y * w + src_x, 0).view(b, 1, h * w).expand(b, c, h * w)
    out = torch.gather(x.reshape(b, c, h * w), 2, flat).view(b, c, h, w)
    return out * inside[:, None].to(x.dtype)


def histograms(x: Tensor) -> Tensor:
    """(B, C, 256) int64 pixel counts per image and channel."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    counts = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts.view(b, c, 256)


def lookup_tables(x: Tensor, ops: Tensor, magnitudes: Tensor) -> Tensor:
    """(B, C, 256) uint8 tables of ImageOps' autocontrast, equalize, posterize and solarize for
    the images with those operations; the identity for the others."""
    b, c = x.shape[:2]
    dev = x.device
    levels = torch.arange(256, device=dev, dtype=torch.int64).expand(b, c, 256)
    table = levels
    counts = histograms(x)
    present = counts > 0
    lo = torch.where(present, levels, 256).amin(dim=2, keepdim=True)
    hi = torch.where(present, levels, -1).amax(dim=2, keepdim=True)
    # autocontrast: int(i * scale + offset) clamped, scale = 255 / (hi - lo), in float64
    span = (hi - lo).clamp(min=1).double()
    scale = torch.full_like(span, 255.0) / span  # tensor / tensor: IEEE division (a scalar's may not be)
    stretched = (levels.double() * scale + (-lo.double() * scale)).trunc().clamp(0, 255).long()
    autocontrast = torch.where(hi > lo, stretched, levels)
    # equalize: (step // 2 + pixels below i) // step, step = (pixels - count of the top level) // 255
    top = counts.gather(2, hi.clamp(min=0))
    step = (counts.sum(dim=2, keepdim=True) - top) // EQUALIZE_LEVELS
    below = counts.cumsum(dim=2) - counts
    equalized = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    equalize = torch.where((present.sum(dim=2, keepdim=True) > 1) & (step > 0), equalized, levels)
    # posterize: keep the top int(v) bits; solarize: invert the levels at or above v
    bits = magnitudes.long().clamp(min=1)[:, None, None]
    posterize = levels & (255 - ((1 << (8 - bits)) - 1))
    solarize = torch.where(levels.double() < magnitudes[:, None, None], levels, 255 - levels)
    for name, candidate in (("AutoContrast", autocontrast), ("Equalize", equalize),
                            ("Posterize", posterize), ("Solarize", solarize)):
        table = torch.where(_is(ops, name)[:, None, None], candidate, table)
    return table.to(torch.uint8)


def apply_tables(x: Tensor, tables: Tensor) -> Tensor:
    """Each image's channel ``k`` through its table ``tables[:, k]``."""
    b, c, h, w = x.shape
    return torch.gather(tables, 2, x.reshape(b, c, h * w).long()).view(b, c, h, w)


def luminance(x: Tensor) -> Tensor:
    """Pillow's RGB -> L conversion (ITU-R 601-2 in 16-bit fixed point), (B, 1, H, W) int32."""
    r, g, b = (x[:, k:k + 1].to(torch.int32) for k in range(3))
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def smoothed(x: Tensor) -> Tensor:
    """Pillow's SMOOTH filter in its float32 arithmetic (0.5, then the rows from the bottom one up,
    each left to right, truncated: rounded), to uint8; the border pixels are copied."""
    scale = torch.tensor(SMOOTH_SCALE, dtype=torch.float32)
    k_side, k_centre = (torch.tensor(k, dtype=torch.float32) / scale for k in (1.0, SMOOTH_CENTRE))
    f = x.to(torch.float32)
    h, w = x.shape[2:]

    def row(r: Tensor, centre: Tensor) -> Tensor:
        return r[..., :-2] * k_side + r[..., 1:-1] * centre + r[..., 2:] * k_side

    total = 0.5 + row(f[:, :, 2:], k_side)  # Pillow starts the sum at 0.5: rounding
    total = total + row(f[:, :, 1:-1], k_centre)
    total = total + row(f[:, :, :-2], k_side)
    out = x.clone()
    out[:, :, 1:h - 1, 1:w - 1] = total.clamp(0, 255).trunc().to(torch.uint8)
    return out


def degenerates(x: Tensor, ops: Tensor) -> Tensor:
    """The degenerate image ImageEnhance blends towards, per image: black (Brightness), grey of
    the luminance (Color), the rounded mean luminance (Contrast), SMOOTH (Sharpness)."""
    grey = luminance(x)
    total = grey.sum(dim=(1, 2, 3), keepdim=True).double()
    mean = (total / torch.full_like(total, grey[0].numel()) + 0.5).floor().to(x.dtype)
    out = torch.zeros_like(x)
    out = torch.where(_is(ops, "Color")[:, None, None, None], grey.to(x.dtype).expand_as(x), out)
    out = torch.where(_is(ops, "Contrast")[:, None, None, None], mean.expand_as(x), out)
    return torch.where(_is(ops, "Sharpness")[:, None, None, None], smoothed(x), out)


def blend(x: Tensor, degenerate: Tensor, ops: Tensor, magnitudes: Tensor) -> Tensor:
    """``Image.blend(degenerate, x, f)`` (``trunc(d + f * (x - d))`` in float32, ``f`` rounded to
    float32) for the ImageEnhance operations; ``f = 1`` (the identity) for the others."""
    enhance = _is(ops, "Brightness", "Color", "Contrast", "Sharpness")
    factor = torch.where(enhance, magnitudes, 1.0).to(torch.float32)[:, None, None, None]
    d = degenerate.to(torch.float32)
    return (d + factor * (x.to(torch.float32) - d)).trunc().to(torch.uint8)


def rand_augment_round(x: Tensor, plan: StrongPlan, r: int) -> Tensor:
    """RandAugment's round ``r``: each image's operation ``plan.ops[:, r]`` at its magnitude."""
    ops, magnitudes = plan.ops[:, r], plan.magnitudes[:, r]
    tables = lookup_tables(x, ops, magnitudes)
    degenerate = degenerates(x, ops)
    y = resample(x, plan.affine[:, r], plan.scaled[:, r], plan.scale_cols[:, r], plan.scale_rows[:, r])
    y = apply_tables(y, tables)
    return blend(y, degenerate, ops, magnitudes)


def cutout(x: Tensor, params: Tensor) -> Tensor:
    """Cutout as the authors draw it: side ``v = u * W`` (``params[:, 0]`` = ``u``, none when 0),
    corner ``int(max(0, c - v / 2))`` for the centre draws ``params[:, 1:]``, far side
    ``min(W, corner + v)``; ``ImageDraw.rectangle`` fills both ends inclusive (truncated)."""
    b, c, h, w = x.shape
    dev = x.device
    v = params[:, 0] * w
    x0 = (params[:, 1] - v / 2).clamp(min=0).trunc()
    y0 = (params[:, 2] - v / 2).clamp(min=0).trunc()
    x1 = torch.minimum(x0 + v, torch.tensor(float(w), device=dev, dtype=v.dtype)).trunc()
    y1 = torch.minimum(y0 + v, torch.tensor(float(h), device=dev, dtype=v.dtype)).trunc()
    ys = torch.arange(h, device=dev, dtype=v.dtype)[None, :, None]
    xs = torch.arange(w, device=dev, dtype=v.dtype)[None, None, :]
    inside = ((v > 0)[:, None, None] & (ys >= y0[:, None, None]) & (ys <= y1[:, None, None])
              & (xs >= x0[:, None, None]) & (xs <= x1[:, None, None]))
    fill = torch.tensor(CUTOUT_FILL[:c], dtype=x.dtype, device=dev)[None, :, None, None]
    return torch.where(inside[:, None], fill, x)


def strong_images(cropped: Tensor, plan: StrongPlan) -> Tensor:
    """RandAugment's rounds and Cutout on uint8 (B, C, H, W) images already cropped and flipped
    (``plan``: their draws, on the images' device); uint8 out."""
    x = cropped
    for r in range(ROUNDS):
        x = rand_augment_round(x, plan, r)
    return cutout(x, plan.cutout)


# ----------------------------------------------------------------------------- Pillow, one image

def _pil_ops() -> dict[str, Callable]:
    from PIL import Image, ImageEnhance, ImageOps

    def affine(img, matrix):
        return img.transform(img.size, Image.Transform.AFFINE, tuple(matrix))

    return {
        "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
        "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
        "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
        "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
        "Equalize": lambda img, v: ImageOps.equalize(img),
        "Identity": lambda img, v: img,
        "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
        "Rotate": lambda img, v: img.rotate(v),
        "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
        "ShearX": lambda img, v: affine(img, (1, v, 0, 0, 1, 0)),
        "ShearY": lambda img, v: affine(img, (1, 0, 0, v, 1, 0)),
        "Solarize": lambda img, v: ImageOps.solarize(img, v),
        "TranslateX": lambda img, v: affine(img, (1, 0, v * img.size[0], 0, 1, 0)),
        "TranslateY": lambda img, v: affine(img, (1, 0, 0, 0, 1, v * img.size[1])),
    }


def strong_view_pil(img, ops: Sequence[int], magnitudes: Sequence[float], cutout_draws: Sequence[float]):
    """RandAugment's rounds and Cutout with Pillow on one cropped and flipped PIL image, for the
    draws of one image of a :class:`StrongPlan` (``cutout_draws``: fraction, centre x, centre y)."""
    from PIL import ImageDraw

    pil = _pil_ops()
    for k, v in zip(ops, magnitudes):
        img = pil[OPS[int(k)][0]](img, float(v))
    fraction, cx, cy = (float(d) for d in cutout_draws)
    if fraction <= 0:
        return img
    v = fraction * img.size[0]
    w, h = img.size
    x0, y0 = int(max(0, cx - v / 2.0)), int(max(0, cy - v / 2.0))
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), CUTOUT_FILL)
    return img


class StrongTransform:
    """The torchvision loader's strong view of one PIL image: padded random crop, optional flip,
    RandAugment and Cutout, drawn from torch's global generator (seeded per worker, as the
    weak view's crop), then ``ToTensor`` and ``Normalize``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], flip: bool = True, padding: int = 4,
                 size: int = 32) -> None:
        from torchvision import transforms  # lazily: torchvision takes seconds to import

        self.crop = transforms.RandomCrop(size, padding=padding)
        self.flip = transforms.RandomHorizontalFlip() if flip else None
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __call__(self, img):
        img = self.crop(img)
        if self.flip is not None:
            img = self.flip(img)
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
        ops, magnitudes, cutout = draw_rand_augment(1, generator, img.size[1], img.size[0])
        img = strong_view_pil(img, ops[0].tolist(), magnitudes[0].tolist(), cutout[0].tolist())
        return self.to_tensor(img)

