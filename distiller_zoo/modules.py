"""Helper modules the distillation methods train or use (CRD's ``models/util.py``), with the
original layer order, so default PyTorch initialisation draws the same numbers.

ConvReg / Connector: FitNet and AB regressors (Romero et al. 2015; Heo et al. 2019).
Paraphraser / Translator: factor transfer (Kim et al. 2018).
Embed / LinearEmbed: CRD (Tian et al. 2020) and CC (Peng et al. 2019) embeddings.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from helper.errors import UserError

Shape = Sequence[int]


class Normalize(nn.Module):
    """``x / ||x||_p`` over dim 1 (no epsilon, as in the CRD code)."""

    def __init__(self, power: int = 2) -> None:
        super().__init__()
        self.power = power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1.0 / self.power)
        return x.div(norm)


class Embed(nn.Module):
    """Flatten, linear projection, L2 normalisation (CRD's embedding head)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = Normalize(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2norm(self.linear(x.reshape(x.shape[0], -1)))


class LinearEmbed(nn.Module):
    """Flatten and linear projection (used by CC)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))


class ConvReg(nn.Module):
    """Convolutional regressor from a student map ``(N, C, H, W)`` to a teacher map's shape:
    stride-2 conv when the student map is twice as large, stride-2 transposed conv when half as
    large, otherwise a valid conv of size ``1 + s_H - t_H``; then BN (and ReLU if asked)."""

    def __init__(self, s_shape: Shape, t_shape: Shape, use_relu: bool = True) -> None:
        super().__init__()
        self.use_relu = use_relu
        _, s_c, s_h, s_w = (int(v) for v in s_shape)
        _, t_c, t_h, t_w = (int(v) for v in t_shape)
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise UserError(f"cannot regress a student feature of size {s_h}x{s_w} onto a teacher "
                            f"feature of size {t_h}x{t_w} (only equal, larger, half or double "
                            f"sizes are supported); choose another layer or pair")
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


class Connector(nn.Module):
    """AB connectors: identity where the shapes already agree, else ``ConvReg`` without ReLU."""

    def __init__(self, s_shapes: Sequence[Shape], t_shapes: Sequence[Shape]) -> None:
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise UserError(f"AB needs as many student as teacher features, got {len(s_shapes)} "
                            f"and {len(t_shapes)}; pick a student/teacher pair of the same family")
        self.s_shapes = s_shapes
        self.t_shapes = t_shapes
        self.connectors = nn.ModuleList(
            nn.Sequential() if (s[1] == t[1] and s[2] == t[2]) else ConvReg(s, t, use_relu=False)
            for s, t in zip(s_shapes, t_shapes))

    def forward(self, g_s: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conn(f) for conn, f in zip(self.connectors, g_s)]


def _conv_bn_lrelu(c_in: int, c_out: int, use_bn: bool, transpose: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transpose else nn.Conv2d)(c_in, c_out, 3, 1, 1)
    return [conv, nn.BatchNorm2d(c_out) if use_bn else nn.Sequential(), nn.LeakyReLU(0.1, inplace=True)]


class Paraphraser(nn.Module):
    """FT paraphraser: a conv encoder to ``k * C`` factor channels and a deconv decoder back."""

    def __init__(self, t_shape: Shape, k: float = 0.5, use_bn: bool = False) -> None:
        super().__init__()
        c_in = int(t_shape[1])
        c_out = int(t_shape[1] * k)
        self.encoder = nn.Sequential(*_conv_bn_lrelu(c_in, c_in, use_bn),
                                     *_conv_bn_lrelu(c_in, c_out, use_bn),
                                     *_conv_bn_lrelu(c_out, c_out, use_bn))
        self.decoder = nn.Sequential(*_conv_bn_lrelu(c_out, c_out, use_bn, transpose=True),
                                     *_conv_bn_lrelu(c_out, c_in, use_bn, transpose=True),
                                     *_conv_bn_lrelu(c_in, c_in, use_bn, transpose=True))

    def forward(self, f_s: torch.Tensor, is_factor: bool = False):
        factor = self.encoder(f_s)
        if is_factor:
            return factor
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """FT translator: the student's conv encoder to the paraphraser's factor channels."""

    def __init__(self, s_shape: Shape, t_shape: Shape, k: float = 0.5, use_bn: bool = True) -> None:
        super().__init__()
        c_in = int(s_shape[1])
        c_out = int(t_shape[1] * k)
        self.encoder = nn.Sequential(*_conv_bn_lrelu(c_in, c_in, use_bn),
                                     *_conv_bn_lrelu(c_in, c_out, use_bn),
                                     *_conv_bn_lrelu(c_out, c_out, use_bn))

    def forward(self, f_s: torch.Tensor) -> torch.Tensor:
        return self.encoder(f_s)
