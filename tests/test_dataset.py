"""Tests of the data layer: CIFAR-100 reading/downloading, both loader kinds, the device
loader's equivalence with torchvision, CRD sampling, and the digits set."""
from __future__ import annotations

import http.server
import pickle
import pickletools
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import dataset as D
from dataset import cifar100, digits
from dataset.contrast import ContrastSampler
from dataset.device_loader import DeviceLoader, augment_batch, derive_seed, normalize_batch
from helper.errors import UserError
from tests.cifar_fixtures import (py2_pickle_bytes, write_fake_cifar100,
                                  write_fake_cifar100_archive)

ROOT = str(Path(__file__).resolve().parent.parent)

N_TRAIN, N_TEST = 600, 200


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar100(root, n_train=N_TRAIN, n_test=N_TEST, seed=0)
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails as it would offline."""
    calls = []

    def offline(url, root, filename=None, md5=None, **kw):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar100, "download_url", offline)
    return calls


def _candidates(image: torch.Tensor, mean, std, flips=(False, True)) -> torch.Tensor:
    """All padded-crop (+flip) augmentations of one uint8 (C, H, W) image: (81 * len(flips),)."""
    offs = torch.tensor([(i, j) for i in range(9) for j in range(9) for _ in flips])
    fl = torch.tensor([f for _ in range(81) for f in flips])
    return augment_batch(image[None].expand(len(offs), -1, -1, -1), offs, fl, mean, std)


def _is_augmentation_of(x: torch.Tensor, image: torch.Tensor, mean, std, flips) -> bool:
    cands = _candidates(image, mean, std, flips)
    return bool((cands - x[None]).abs().amax(dim=(1, 2, 3)).min() < 1e-5)


# ----------------------------------------------------------------------------- file format

def test_fixture_files_are_python2_protocol2_pickles(cifar_root):
    folder = cifar_root / "cifar-100-python"
    for name in ("train", "test", "meta"):
        raw = (folder / name).read_bytes()
        ops = {op.name for op, _, _ in pickletools.genops(raw)}
        assert raw[:2] == b"\x80\x02"
        assert {"SHORT_BINSTRING"} <= ops
        assert not ops & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}
        as_str = pickle.loads(raw, encoding="latin1")
        as_bytes = pickle.loads(raw, encoding="bytes")
        assert all(isinstance(k, str) for k in as_str)
        assert all(isinstance(k, bytes) for k in as_bytes)
        assert [k.encode("latin1") for k in as_str] == list(as_bytes)
    train_str = pickle.loads((folder / "train").read_bytes(), encoding="latin1")
    train_bytes = pickle.loads((folder / "train").read_bytes(), encoding="bytes")
    assert train_str["data"].dtype == np.uint8 and train_str["data"].shape == (N_TRAIN, 3072)
    np.testing.assert_array_equal(train_str["data"], train_bytes[b"data"])
    assert train_str["fine_labels"] == train_bytes[b"fine_labels"]
    meta = pickle.loads((folder / "meta").read_bytes(), encoding="bytes")
    assert len(meta[b"fine_label_names"]) == 100 and isinstance(meta[b"fine_label_names"][0], bytes)


def test_reader_parses_official_layout(cifar_root):
    folder = cifar_root / "cifar-100-python"
    images, labels = cifar100.read_cifar100_file(folder / "train")
    assert images.shape == (N_TRAIN, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() == 99
    raw = pickle.loads((folder / "train").read_bytes(), encoding="bytes")
    flat = raw[b"data"][7]
    np.testing.assert_array_equal(images[7][..., 0].ravel(), flat[:1024])  # red plane first
    np.testing.assert_array_equal(images[7][..., 2].ravel(), flat[2048:])
    assert labels.tolist() == raw[b"fine_labels"]
    meta = cifar100.read_cifar100_meta(cifar_root)
    assert meta["fine_label_names"][3] == "fine_003" and len(meta["coarse_label_names"]) == 20


@pytest.mark.parametrize("key_type", [str, bytes])
def test_reader_accepts_str_or_bytes_keys_from_any_pickler(tmp_path, key_type):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    entry = {key_type(k, "ascii") if key_type is bytes else k: v
             for k, v in {"data": data, "fine_labels": [0, 1, 2, 3, 99]}.items()}
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps(entry, protocol=4))
    images, labels = cifar100.read_cifar100_file(path)
    assert images.shape == (5, 32, 32, 3) and labels.tolist() == [0, 1, 2, 3, 99]


def test_class_dependent_images(cifar_root):
    images, labels = cifar100.read_cifar100_file(cifar_root / "cifar-100-python" / "train")
    means = np.stack([images[labels == c].mean(axis=(0, 1, 2)) for c in range(100)])
    nearest = [int(np.argmin(((images[i].mean(axis=(0, 1)) - means) ** 2).sum(1)))
               for i in range(100)]
    assert np.mean(np.array(nearest) == labels[:100]) > 0.9


# ----------------------------------------------------------------------------- errors

def test_missing_files_offline_is_one_line_user_error(tmp_path, no_network):
    with pytest.raises(UserError) as err:
        cifar100.get_cifar100_dataloaders(data_folder=tmp_path / "nowhere", num_workers=0)
    msg = str(err.value)
    assert "CIFAR-100" in msg and str(tmp_path / "nowhere" / "cifar-100-python") in msg
    assert "\n" not in msg and no_network == [cifar100.URL]
    with pytest.raises(UserError, match="CIFAR-100.*missing"):
        cifar100.ensure_cifar100(tmp_path, download=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_labels", "bad_shape"])
def test_bad_file_is_user_error_naming_it(tmp_path, damage, no_network):
    folder = write_fake_cifar100(tmp_path, n_train=120, n_test=50)
    path = folder / "train"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"<html>not found</html>")
    elif damage == "no_labels":
        path.write_bytes(py2_pickle_bytes({"data": np.zeros((4, 3072), np.uint8)}))
    else:
        path.write_bytes(py2_pickle_bytes({"data": np.zeros((4, 1000), np.uint8),
                                           "fine_labels": [0, 1, 2, 3]}))
    with pytest.raises(UserError) as err:
        cifar100.get_cifar100_dataloaders(data_folder=tmp_path, num_workers=0)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert no_network == []  # files present: no download, no checksum of existing files


def test_unknown_names_are_user_errors(cifar_root):
    with pytest.raises(UserError, match="cifar100, digits, imagenet"):
        D.get_dataloaders("mnist")
    with pytest.raises(UserError, match="not available for --dataset imagenet"):
        D.get_sample_dataloaders("imagenet")
    with pytest.raises(UserError, match="device, torchvision"):
        D.get_dataloaders("digits", loader="dali")
    with pytest.raises(UserError, match="exact, relax"):
        D.get_sample_dataloaders("digits", mode="loose")
    with pytest.raises(UserError, match="known"):
        D.num_classes("mnist")


# ----------------------------------------------------------------------------- download

def test_download_called_with_official_url_md5_and_timeout(tmp_path, monkeypatch):
    seen = {}

    def fake_download(url, root, filename=None, md5=None, **kw):
        seen.update(url=url, root=root, filename=filename, md5=md5,
                    timeout=socket.getdefaulttimeout())
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar100, "download_url", fake_download)
    before = socket.getdefaulttimeout()
    with pytest.raises(UserError, match="download failed.*network unreachable"):
        cifar100.ensure_cifar100(tmp_path)
    assert seen["url"] == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert seen["md5"] == "eb9058c3a382ffc7106e4002c42a8d85"
    assert seen["filename"] == "cifar-100-python.tar.gz" and Path(seen["root"]) == tmp_path
    assert seen["timeout"] == cifar100.DOWNLOAD_TIMEOUT_S and seen["timeout"] > 0
    assert socket.getdefaulttimeout() == before  # restored


def test_downloaded_archive_checksum_is_verified(tmp_path, monkeypatch):
    def corrupt_download(url, root, filename=None, md5=None, **kw):
        Path(root, filename).write_bytes(b"truncated archive")

    monkeypatch.setattr(cifar100, "download_url", corrupt_download)
    with pytest.raises(UserError, match="corrupt.*eb9058c3a382ffc7106e4002c42a8d85"):
        cifar100.ensure_cifar100(tmp_path)
    assert not (tmp_path / "cifar-100-python").exists()  # nothing unpacked


def test_downloaded_archive_is_verified_and_unpacked(tmp_path, monkeypatch):
    source = tmp_path / "served.tar.gz"
    md5 = write_fake_cifar100_archive(source, n_train=150, n_test=60)

    def fake_download(url, root, filename=None, md5=None, **kw):
        Path(root, filename).write_bytes(source.read_bytes())

    monkeypatch.setattr(cifar100, "download_url", fake_download)
    folder = cifar100.ensure_cifar100(tmp_path / "data", md5=md5)
    images, labels = cifar100.read_cifar100_file(folder / "train")
    assert images.shape == (150, 32, 32, 3) and len(labels) == 150


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""
    stall = False

    def do_GET(self):  # noqa: N802 (http.server API)
        if self.stall:
            time.sleep(3)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    servers = []

    def start(payload: bytes, stall: bool = False) -> str:
        handler = type("H", (_Handler,), {"payload": payload, "stall": stall})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/cifar-100-python.tar.gz"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_real_download_utility_over_local_http(tmp_path, local_server):
    """torchvision's download_url end to end against a local server (no internet needed)."""
    archive = tmp_path / "src.tar.gz"
    md5 = write_fake_cifar100_archive(archive, n_train=100, n_test=50)
    url = local_server(archive.read_bytes())
    folder = cifar100.ensure_cifar100(tmp_path / "data", url=url, md5=md5)
    assert cifar100.read_cifar100_file(folder / "test")[0].shape == (50, 32, 32, 3)
    # a wrong md5 from the server is refused
    with pytest.raises(UserError, match="corrupt"):
        cifar100.ensure_cifar100(tmp_path / "other", url=url, md5="0" * 32)


def test_download_timeout_applies(tmp_path, local_server):
    url = local_server(b"", stall=True)
    start = time.perf_counter()
    with pytest.raises(UserError, match="CIFAR-100.*download failed"):
        cifar100.ensure_cifar100(tmp_path, url=url, timeout=0.5)
    assert time.perf_counter() - start < 2.9


# ----------------------------------------------------------------------------- augmentation

def test_augment_batch_matches_torchvision_pixels():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=gen)
    offsets = torch.randint(0, 9, (24, 2), generator=gen)
    offsets[:4] = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0]])
    flips = torch.rand(24, generator=gen) < 0.5
    flips[:4] = torch.tensor([True, False, True, False])
    mean, std = cifar100.MEAN, cifar100.STD
    ours = augment_batch(images, offsets, flips, mean, std)
    for b in range(24):
        pil = Image.fromarray(images[b].permute(1, 2, 0).numpy())
        pil = TF.crop(TF.pad(pil, 4), int(offsets[b, 0]), int(offsets[b, 1]), 32, 32)
        if flips[b]:
            pil = TF.hflip(pil)
        ref = TF.normalize(TF.to_tensor(pil), mean, std)
        assert torch.equal(ours[b], ref), b
    # the padded border is (0 - mean) / std after normalization
    corner = augment_batch(images[:1], torch.tensor([[0, 0]]), torch.tensor([False]), mean, std)
    expected = -torch.tensor(mean) / torch.tensor(std)
    torch.testing.assert_close(corner[0, :, 0, 0], expected)
    # and the test path: normalize only, identical to to_tensor + normalize
    pil = Image.fromarray(images[5].permute(1, 2, 0).numpy())
    assert torch.equal(normalize_batch(images[5:6], mean, std)[0],
                       TF.normalize(TF.to_tensor(pil), mean, std))


def test_epoch_plan_distribution():
    n = 40000
    loader = DeviceLoader(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.zeros(n),
                          batch_size=512, mean=(0.5,) * 3, std=(0.5,) * 3, seed=3)
    plan = loader.epoch_plan(0)
    assert torch.equal(plan.order.sort().values, torch.arange(n))
    for axis in range(2):
        counts = torch.bincount(plan.crop_offsets[:, axis], minlength=9).double()
        assert counts.numel() == 9 and plan.crop_offsets[:, axis].min() == 0
        expected = n / 9
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 30, chi2  # 8 dof: P(chi2 > 30) ~ 2e-4
    joint = torch.bincount(plan.crop_offsets[:, 0] * 9 + plan.crop_offsets[:, 1], minlength=81)
    assert joint.min() > 0.6 * n / 81  # both axes drawn independently
    rate = plan.flip_mask.double().mean().item()
    assert abs(rate - 0.5) < 4 * (0.25 / n) ** 0.5


def test_device_loader_applies_its_plan_and_keeps_last_batch():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (150, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(150) % 7
    loader = DeviceLoader(images, labels, batch_size=64, mean=cifar100.MEAN, std=cifar100.STD,
                          seed=5, with_indices=True)
    plan = loader.epoch_plan(0)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[1]) for b in batches] == [64, 64, 22]
    x = torch.cat([b[0] for b in batches])
    idx = torch.cat([b[2] for b in batches])
    assert torch.equal(idx, plan.order)
    assert torch.equal(torch.cat([b[1] for b in batches]), labels[idx])
    expected = augment_batch(images[plan.order], plan.crop_offsets, plan.flip_mask,
                             cifar100.MEAN, cifar100.STD)
    assert torch.equal(x, expected)
    assert x.dtype == torch.float32 and x.is_contiguous()
    cl = DeviceLoader(images, labels, batch_size=64, mean=cifar100.MEAN, std=cifar100.STD,
                      channels_last=True)
    xb = next(iter(cl))[0]
    assert xb.is_contiguous(memory_format=torch.channels_last)


def test_shuffling_is_deterministic_and_resumable():
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(100) % 10

    def make(seed):
        return DeviceLoader(images, labels, batch_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                            seed=seed, with_indices=True)

    def epoch(loader):
        batches = list(loader)
        return torch.cat([b[2] for b in batches]), torch.cat([b[0] for b in batches])

    a, b = make(0), make(0)
    a_epochs = [epoch(a) for _ in range(3)]
    b0 = epoch(b)
    assert torch.equal(a_epochs[0][0], b0[0]) and torch.equal(a_epochs[0][1], b0[1])
    assert not torch.equal(a_epochs[0][0], a_epochs[1][0])  # new order each epoch
    resumed = make(0)
    resumed.set_epoch(2)
    r = epoch(resumed)
    assert torch.equal(r[0], a_epochs[2][0]) and torch.equal(r[1], a_epochs[2][1])
    assert resumed.epoch == 3 and resumed.state_dict() == {"seed": 0, "epoch": 3}
    assert not torch.equal(epoch(make(1))[0], a_epochs[0][0])
    assert derive_seed(0, 1) != derive_seed(1, 0)


def test_torchvision_loader_order_is_seeded(cifar_root):
    def order(seed, epoch):
        train, _, _ = D.get_dataloaders("cifar100", 64, 0, cifar_root, is_instance=True,
                                        loader="torchvision", seed=seed)
        train.set_epoch(epoch)
        return torch.cat([b[2] for b in train])

    first = order(0, 4)
    assert torch.equal(first, order(0, 4))
    assert not torch.equal(first, order(0, 5))
    assert torch.equal(first.sort().values, torch.arange(N_TRAIN))


@pytest.mark.parametrize("kind", ["device", "torchvision"])
def test_indices_point_at_the_returned_image(cifar_root, kind):
    train, _, n_data = D.get_dataloaders("cifar100", 16, 0, cifar_root, is_instance=True,
                                         loader=kind)
    assert n_data == N_TRAIN == len(train.dataset)
    images, labels = cifar100.read_cifar100_file(cifar_root / "cifar-100-python" / "train")
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    x, y, idx = next(iter(train))
    for b in range(8):
        i = int(idx[b])
        assert int(y[b]) == labels[i]
        assert _is_augmentation_of(x[b], images[i], cifar100.MEAN, cifar100.STD, (False, True))


def test_unaugmented_device_loader_returns_dataset_items():
    images = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(70) % 5
    loader = DeviceLoader(images, labels, batch_size=16, mean=(0.4,) * 3, std=(0.2,) * 3,
                          augment=False, with_indices=True)
    for x, y, idx in loader:
        assert torch.equal(x, normalize_batch(images[idx], (0.4,) * 3, (0.2,) * 3))
        assert torch.equal(y, labels[idx])


def test_loader_kinds_agree(cifar_root):
    dev_train, dev_test, n1 = D.get_dataloaders("cifar100", 64, 0, cifar_root)
    tv_train, tv_test, n2 = D.get_dataloaders("cifar100", 64, 0, cifar_root,
                                              loader="torchvision")
    assert n1 == n2 == N_TRAIN
    assert len(dev_train) == len(tv_train) == 10 and len(dev_test) == len(tv_test) == 7
    assert dev_test.batch_size == tv_test.batch_size == 32
    for (xd, yd), (xt, yt) in zip(dev_test, tv_test):  # unaugmented, in order: identical
        assert torch.equal(xd, xt) and torch.equal(yd, yt)

    def stats(loader):
        x = torch.cat([b[0] for b in loader])
        return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)), len(x)

    md, sd, nd = stats(dev_train)
    mt, st, nt = stats(tv_train)
    assert nd == nt == N_TRAIN
    torch.testing.assert_close(md, mt, atol=0.03, rtol=0)
    torch.testing.assert_close(sd, st, atol=0.03, rtol=0)


# ----------------------------------------------------------------------------- CRD sampling

def _check_contrast(contrast_idx, idx, y, labels, mode, k, replacement=False):
    assert contrast_idx.shape == (len(idx), k + 1) and contrast_idx.dtype == torch.int64
    if mode == "exact":
        assert torch.equal(contrast_idx[:, 0], idx)
    else:
        assert torch.equal(labels[contrast_idx[:, 0]], y)
    neg = contrast_idx[:, 1:]
    assert (labels[neg] != y[:, None]).all()
    if not replacement:
        for row in neg:
            assert row.unique().numel() == k


@pytest.mark.parametrize("kind", ["device", "torchvision"])
@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_crd_sampling_semantics(cifar_root, kind, mode):
    train, _, n_data = D.get_sample_dataloaders("cifar100", 32, 0, cifar_root, k=200,
                                                mode=mode, loader=kind)
    labels = torch.from_numpy(cifar100.read_cifar100_file(
        cifar_root / "cifar-100-python" / "train")[1])
    for step, (x, y, idx, cidx) in enumerate(train):
        _check_contrast(cidx.cpu(), idx.cpu(), y.cpu(), labels, mode, 200)
        if step == 3:
            break
    if mode == "relax":  # the positive is not always the sample itself
        assert (cidx[:, 0] != idx).any()


@pytest.mark.parametrize("kind", ["device", "torchvision"])
def test_crd_with_replacement_and_without_sampling(cifar_root, kind):
    train, _, _ = D.get_sample_dataloaders("cifar100", 32, 0, cifar_root, k=700, loader=kind)
    labels = torch.from_numpy(cifar100.read_cifar100_file(
        cifar_root / "cifar-100-python" / "train")[1])
    x, y, idx, cidx = next(iter(train))  # pool has 594 < 700: drawn with replacement
    _check_contrast(cidx, idx, y, labels, "exact", 700, replacement=True)
    train, _, _ = D.get_sample_dataloaders("cifar100", 32, 0, cifar_root, is_sample=False,
                                           loader=kind)
    assert len(next(iter(train))) == 3


def test_contrast_sampler_mixed_pools_and_uniformity():
    labels = torch.tensor([0] * 5 + [1] * 10 + [2] * 25)  # pools: 35, 30, 15
    sampler = ContrastSampler(labels, 3, k=20, mode="exact")
    gen = torch.Generator().manual_seed(0)
    targets = torch.tensor([0, 1, 2] * 400)
    idx = torch.tensor([0, 5, 15] * 400)
    out = sampler.sample(idx, targets, gen)
    _check_contrast(out[:3], idx[:3], targets[:3], labels, "exact", 20, replacement=True)
    for row, t in zip(out, targets):
        neg = row[1:]
        assert (labels[neg] != t).all()
        if t < 2:
            assert neg.unique().numel() == 20  # pool >= k: no replacement
    # uniform over the pool of class 0 (indices 5..39)
    counts = torch.bincount(out[targets == 0, 1:].reshape(-1), minlength=40)[5:].double()
    expected = counts.sum() / 35
    assert float(((counts - expected) ** 2 / expected).sum()) < 70  # 34 dof


def test_contrast_percent_fixes_a_subset_per_class():
    labels = torch.arange(400) % 4  # pools of 300
    sampler = ContrastSampler(labels, 4, k=50, mode="exact", percent=0.5, seed=1)
    assert sampler.neg_counts.tolist() == [150] * 4
    gen = torch.Generator().manual_seed(0)
    targets = torch.zeros(200, dtype=torch.long)
    out = sampler.sample(torch.zeros(200, dtype=torch.long), targets, gen)
    seen = out[:, 1:].unique()
    assert seen.numel() == 150 and (labels[seen] != 0).all()
    one = torch.stack([sampler.sample_one(0, 0) for _ in range(50)])
    assert set(one[:, 1:].unique().tolist()) <= set(seen.tolist())


# ----------------------------------------------------------------------------- digits

def test_digits_split_shapes_and_statistics():
    data = digits.load_digits_data()
    assert data.train_images.shape == (1437, 32, 32, 3)
    assert data.test_images.shape == (360, 32, 32, 3)
    assert data.train_images.dtype == np.uint8 and data.train_images.max() == 255
    assert D.num_classes("digits") == 10 and set(data.train_labels.tolist()) == set(range(10))
    full = np.bincount(np.concatenate([data.train_labels, data.test_labels]))
    assert np.all(np.abs(np.bincount(data.test_labels) - 0.2 * full) <= 1)  # stratified
    assert (data.train_images[:, ::4, ::4, 0].repeat(4, 1).repeat(4, 2)
            == data.train_images[..., 0]).all()  # nearest-neighbour 4x upsampling
    mean, std = D.normalization("digits")
    x = normalize_batch(torch.from_numpy(data.train_images).permute(0, 3, 1, 2), mean, std)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    images, labels = D.load_test_split("digits")
    assert images.shape == (360, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(labels, torch.from_numpy(data.test_labels))


def test_digits_are_what_scikit_learn_gives_without_importing_it():
    """The file read directly is load_digits' data, and the stored split is train_test_split's
    (in its order), so reading them without scikit-learn changes no digits result."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = digits.bundled_digits()
    raw = load_digits()
    assert np.array_equal(images, raw.images) and np.array_equal(labels, raw.target)
    train, test = train_test_split(np.arange(len(labels)), test_size=digits.TEST_FRACTION,
                                   random_state=digits.SPLIT_SEED, stratify=labels)
    stored_train, stored_test = digits.split_indices()
    assert np.array_equal(stored_train, train) and np.array_equal(stored_test, test)
    code = "import sys; from dataset import digits; digits.load_digits_data(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.parametrize("kind", ["device", "torchvision"])
def test_digits_loaders_never_flip(kind):
    train, test, n_data = D.get_dataloaders("digits", 32, 0, is_instance=True, loader=kind)
    assert n_data == 1437 and len(train) == 45 and len(test) == 23
    data = digits.load_digits_data()
    images = torch.from_numpy(data.train_images).permute(0, 3, 1, 2)
    x, y, idx = next(iter(train))
    asymmetric = [b for b in range(32) if not torch.equal(images[int(idx[b])],
                                                          images[int(idx[b])].flip(2))]
    for b in asymmetric[:6]:  # each is an unflipped padded crop of its digit
        assert _is_augmentation_of(x[b], images[int(idx[b])], data.mean, data.std, (False,))
    if kind == "device":
        assert not train.epoch_plan(0).flip_mask.any()


def test_digits_crd_k_is_capped():
    k = D.sample_k("digits", 16384)
    assert k == 1437 - np.bincount(digits.load_digits_data().train_labels).max()
    train, _, _ = D.get_sample_dataloaders("digits", 16, 0, k=16384, mode="relax")
    x, y, idx, cidx = next(iter(train))
    labels = torch.from_numpy(digits.load_digits_data().train_labels)
    _check_contrast(cidx, idx, y, labels, "relax", k)
    assert D.sample_k("cifar100", 16384) == 16384


@pytest.mark.parametrize("kind", ["device", "torchvision"])
def test_with_seed_replays_a_loader_built_with_that_seed(kind):
    """``with_seed`` (how --trials gives each trial its data order without loading the data
    again) yields what a loader built with that seed yields: same order, and on the device
    loader the same augmented pixels; another seed gives another order."""
    kw = dict(batch_size=64, num_workers=0, loader=kind)
    built = D.get_dataloaders("digits", seed=3, **kw)[0]
    derived = D.get_dataloaders("digits", seed=0, **kw)[0]
    reseeded = derived.with_seed(3)
    assert reseeded.seed == 3 and derived.seed == 0 and reseeded.dataset is derived.dataset
    for a, b, c in zip(built, reseeded, derived):
        assert torch.equal(a[1], b[1])
        if kind == "device":
            assert torch.equal(a[0], b[0])
        assert not torch.equal(a[1], c[1])
        break
