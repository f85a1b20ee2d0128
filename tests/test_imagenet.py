"""ImageNet models (torchvision compatibility, feature interface, represnet18 conversion) and
the ImageFolder loaders."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from dataset.imagenet import (IMAGENET_MEAN, IMAGENET_STD, get_imagenet_dataloaders, get_imagenet_val_loader,
                              index_image_folder, num_imagenet_classes)
from helper.errors import UserError
from tests.guards import deadline
from models.imagenet import build_imagenet_model, check_imagenet_model_name, imagenet_model_dict
from models.rep_blocks import reparameterize_model

TORCHVISION_NAMES = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]
# name -> channels of [f0, f1, f2, f3, f4, pooled]
FEATURE_CHANNELS = {
    "resnet18": [64, 64, 128, 256, 512, 512],
    "resnet34": [64, 64, 128, 256, 512, 512],
    "resnet50": [64, 256, 512, 1024, 2048, 2048],
    "represnet18": [64, 64, 128, 256, 512, 512],
    "mobilenet_v1": [32, 128, 256, 512, 1024, 1024],
    "mobilenet_v2": [32, 24, 32, 96, 320, 1280],
}
STRIDES = [2, 4, 8, 16, 32]


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that eval outputs depend on them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model


def test_registry_is_separate_and_complete():
    from models import model_dict

    assert set(imagenet_model_dict) >= {"resnet18", "resnet34", "resnet50", "mobilenet_v1",
                                        "mobilenet_v2", "represnet18"}
    assert "mobilenet_v2" not in model_dict and "represnet18" not in model_dict
    with pytest.raises(UserError, match="known ImageNet models: .*resnet18"):
        check_imagenet_model_name("resnet181")


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_state_dict_loads_strictly_and_matches(name):
    torch.manual_seed(0)
    reference = randomize_bn(getattr(torchvision.models, name)(num_classes=10)).eval()
    ours = imagenet_model_dict[name](num_classes=10)
    theirs = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    ours.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
        _, logits = ours(x, is_feat=True)
        torch.testing.assert_close(logits, reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FEATURE_CHANNELS))
def test_forward_features(name):
    torch.manual_seed(0)
    model = build_imagenet_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats, logits_f = model(x, is_feat=True)
        pre_feats, _ = model(x, is_feat=True, preact=True)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits_f, logits)
    channels = FEATURE_CHANNELS[name]
    assert len(feats) == len(pre_feats) == len(channels)
    for f, p, c, s in zip(feats[:-1], pre_feats[:-1], channels[:-1], STRIDES):
        assert f.shape == p.shape == (2, c, 32 // s, 32 // s)
    assert feats[-1].shape == (2, channels[-1])  # the pooled embedding ends the list
    torch.testing.assert_close(model.fc(feats[-1]) if hasattr(model, "fc")
                               else model.classifier(feats[-1]), logits)
    if name != "mobilenet_v2":  # linear bottlenecks: no ReLU, so preact == feats there
        assert any((p < 0).any() for p in pre_feats[1:-1])
        for f, p in zip(feats[1:-1], pre_feats[1:-1]):
            torch.testing.assert_close(f, torch.relu(p))

    bns = model.get_bn_before_relu()
    assert [m.num_features if isinstance(m, nn.BatchNorm2d) else m.out_channels
            for m in bns] == channels[1:-1]
    feat_modules = model.get_feat_modules()
    assert isinstance(feat_modules, nn.ModuleList)
    feat_params = {id(p) for p in feat_modules.parameters()}
    head = model.fc if hasattr(model, "fc") else model.classifier
    assert not feat_params & {id(p) for p in head.parameters()}
    assert len(feat_params) + len(list(head.parameters())) == len(list(model.parameters()))


def test_mobilenet_v1_layout():
    """Howard 2017 Table 1: 4.2M parameters with a 1000-way classifier, 28 conv layers."""
    model = imagenet_model_dict["mobilenet_v1"]()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4.23e6, rel=0.01)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 27
    assert "model.13.3.weight" in model.state_dict() and "fc.weight" in model.state_dict()


def test_represnet18_conversion_is_exact():
    """Train form (separate branches, as the original computes them) vs converted form, in eval
    mode with random BN statistics."""
    torch.manual_seed(0)
    model = randomize_bn(build_imagenet_model("represnet18", num_classes=10, fused=False)).eval()
    keys = model.state_dict().keys()
    assert "layer1.0.conv1.duplicate1.conv.weight" in keys  # AMBB by default
    assert "conv1.weight" in keys and "layer2.0.downsample.0.weight" in keys  # plain stem, 1x1
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        feats_before, _ = model(x, is_feat=True, preact=True)
        reparameterize_model(model)
        after = model(x)
        feats_after, _ = model(x, is_feat=True, preact=True)
    scale = before.abs().max()
    torch.testing.assert_close(after / scale, before / scale, rtol=1e-5, atol=1e-5)
    for a, b in zip(feats_after, feats_before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())

    deploy = build_imagenet_model("represnet18", num_classes=10, deploy=True).eval()
    deploy.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), after)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in deploy.modules())
    assert n_convs == 1 + 16 + 3  # stem, 16 block convs, 3 projection shortcuts, as ResNet-18


# ---- data ---------------------------------------------------------------------------------

COLOURS = {"n01": (255, 0, 0), "n02": (0, 128, 255), "n03": (10, 200, 30)}


def make_image_folder(root: str, n_train: int = 3, n_val: int = 2) -> None:
    for split, count in (("train", n_train), ("val", n_val)):
        for cls, colour in COLOURS.items():
            os.makedirs(os.path.join(root, split, cls))
            for i in range(count):
                Image.new("RGB", (48 + 8 * i, 40), colour).save(
                    os.path.join(root, split, cls, f"{cls}_{i}.JPEG"), quality=100)


def test_image_folder_loaders(tmp_path):
    make_image_folder(str(tmp_path))
    train_loader, val_loader, n_data, num_classes = get_imagenet_dataloaders(
        str(tmp_path), batch_size=4, num_workers=0)
    assert (n_data, num_classes) == (9, 3)
    images, targets = next(iter(train_loader))
    assert images.shape == (4, 3, 224, 224) and targets.shape == (4,)
    assert len(train_loader.dataset) == 9 and len(val_loader.dataset) == 6

    images, targets = next(iter(val_loader))  # unshuffled: the first class comes first
    assert images.shape == (4, 3, 224, 224)
    assert targets.tolist() == [0, 0, 1, 1]
    mean = torch.tensor(IMAGENET_MEAN)
    std = torch.tensor(IMAGENET_STD)
    for image, cls in ((images[0], "n01"), (images[2], "n02")):  # solid colours, normalized
        expected = (torch.tensor(COLOURS[cls]) / 255 - mean) / std
        torch.testing.assert_close(image.mean(dim=(1, 2)), expected, atol=0.05, rtol=0)


def test_instance_loader_returns_indices(tmp_path):
    make_image_folder(str(tmp_path))
    train_loader, _, n_data, _ = get_imagenet_dataloaders(str(tmp_path), batch_size=9,
                                                          num_workers=0, is_instance=True)
    _, _, index = next(iter(train_loader))
    assert sorted(index.tolist()) == list(range(n_data))


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"train not found; expected <data_folder>/train/<class>"):
        get_imagenet_dataloaders(str(tmp_path / "nowhere"), num_workers=0)
    make_image_folder(str(tmp_path))
    os.rename(tmp_path / "val", tmp_path / "validation")
    with pytest.raises(UserError, match="val not found"):
        get_imagenet_dataloaders(str(tmp_path), num_workers=0)


def test_mismatched_classes_and_distributed_without_init(tmp_path):
    make_image_folder(str(tmp_path))
    os.rename(tmp_path / "val" / "n03", tmp_path / "val" / "n04")
    with pytest.raises(UserError, match="differ"):
        get_imagenet_dataloaders(str(tmp_path), num_workers=0)
    os.rename(tmp_path / "val" / "n04", tmp_path / "val" / "n03")
    with pytest.raises(UserError, match="torch.distributed"):
        get_imagenet_dataloaders(str(tmp_path), num_workers=0, distributed=True)


def test_distributed_sampler_splits_train_set(tmp_path, monkeypatch):
    make_image_folder(str(tmp_path), n_train=4)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    train_loader, val_loader, n_data, _ = get_imagenet_dataloaders(str(tmp_path), batch_size=2,
                                                                   num_workers=0,
                                                                   distributed=True)
    assert isinstance(train_loader.sampler, torch.utils.data.DistributedSampler)
    assert len(list(train_loader.sampler)) == n_data // 2
    # each process evaluates an exact shard of the val set: rank 1 of 2 takes positions 1, 3, 5
    assert list(val_loader.sampler) == [1, 3, 5]


# ---- hostile trees: loops, FIFOs, links, non-images, empty classes ---------------------------

def test_a_symlink_to_dot_in_a_class_folder_does_not_loop(tmp_path):
    make_image_folder(str(tmp_path))
    os.symlink(".", tmp_path / "val" / "n01" / "again")
    os.symlink("..", tmp_path / "val" / "n02" / "up")
    with deadline():
        classes, samples = index_image_folder(str(tmp_path / "val"))
    assert classes == ["n01", "n02", "n03"] and len(samples) == 6  # each image once
    assert [target for _, target in samples] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("make,expected", [
    (lambda path: os.mkfifo(path), "is not a regular file but a FIFO"),
    (lambda path: path.write_text("not an image"), "is not an image (no format PIL reads)"),
    (lambda path: os.symlink("/dev/null", path), "is not a regular file but a character device"),
    (lambda path: os.symlink(path.parent / "missing.png", path), "a broken symlink"),
    (lambda path: os.symlink(path.parent.parent, path), "is not a regular file but a directory"),
], ids=["fifo", "text", "device-link", "broken-link", "dir-link"])
def test_a_bad_file_is_one_line_when_the_set_is_indexed(tmp_path, make, expected):
    make_image_folder(str(tmp_path))
    bad = tmp_path / "val" / "n02" / "x.png"
    make(bad)
    with deadline(), pytest.raises(UserError) as err:
        get_imagenet_dataloaders(str(tmp_path), num_workers=0)  # before any batch is read
    assert str(bad) in str(err.value) and expected in str(err.value), err.value
    assert len(str(err.value).splitlines()) == 1


def test_a_symlinked_image_is_read_wherever_it_lies(tmp_path):
    """A file symlink resolving to a regular image file is followed, also out of the tree;
    one resolving to a file that is no image is refused (the rule above)."""
    make_image_folder(str(tmp_path / "data"))
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (40, 40), COLOURS["n02"]).save(outside)
    os.symlink(outside, tmp_path / "data" / "val" / "n02" / "linked.png")
    classes, samples = index_image_folder(str(tmp_path / "data" / "val"))
    assert (str(tmp_path / "data" / "val" / "n02" / "linked.png"), 1) in samples and len(samples) == 7
    (tmp_path / "secret.txt").write_text("root:x:0:0")
    os.symlink(tmp_path / "secret.txt", tmp_path / "data" / "val" / "n03" / "passwd.png")
    with pytest.raises(UserError, match="passwd.png is not an image"):
        index_image_folder(str(tmp_path / "data" / "val"))


def test_an_empty_class_folder_is_no_class(tmp_path):
    make_image_folder(str(tmp_path))
    for split in ("train", "val"):
        os.makedirs(tmp_path / split / "n04" / "nested")  # no images, at any depth
    assert num_imagenet_classes(str(tmp_path)) == 3
    train_loader, val_loader, n_data, num_classes = get_imagenet_dataloaders(str(tmp_path), num_workers=0)
    assert (n_data, num_classes) == (9, 3) and val_loader.dataset.classes == ["n01", "n02", "n03"]
    shutil.rmtree(tmp_path / "train")  # validation only: the classes of val
    assert num_imagenet_classes(str(tmp_path)) == 3


def test_a_val_class_without_images_is_a_class_mismatch(tmp_path):
    """An empty val class folder whose train folder holds images: the labels would shift."""
    make_image_folder(str(tmp_path))
    for image in os.listdir(tmp_path / "val" / "n02"):
        os.remove(tmp_path / "val" / "n02" / image)
    for build in (lambda: get_imagenet_dataloaders(str(tmp_path), num_workers=0),
                  lambda: get_imagenet_val_loader(str(tmp_path), num_workers=0)):
        with pytest.raises(UserError, match=r"differ .*\(2 vs 3 classes holding images\)"):
            build()


def test_an_image_truncated_after_its_header_is_one_line_mid_epoch(tmp_path):
    """Headers are read at indexing; pixels only when a batch needs them: a truncated image is
    one line then, also from a DataLoader worker."""
    make_image_folder(str(tmp_path))
    victim = tmp_path / "val" / "n03" / "n03_1.JPEG"
    noise = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(noise.numpy()).save(victim, quality=95)  # most of its bytes are pixels
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2])
    loader = get_imagenet_val_loader(str(tmp_path), batch_size=2, num_workers=1)
    with deadline(60), pytest.raises(UserError) as err:
        list(loader)
    assert str(err.value).startswith(f"{victim} is not a readable image (OSError: image file is truncated")
    assert len(str(err.value).splitlines()) == 1


# ---- the entry scripts on ImageNet --------------------------------------------------------

def _exit_line(capsys, fn, argv) -> str:
    with pytest.raises(SystemExit) as err:
        fn(argv)
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.slow
def test_imagenet_teacher_student_convert_validate(tmp_path, monkeypatch, capsys):
    """resnet18 teacher -> kdrefine represnet18 student -> deploy form, one 3-image step each
    (the ImageNet transforms make every image 224x224)."""
    import json

    import convert
    import train_student
    import train_teacher
    import validation

    monkeypatch.chdir(tmp_path)
    make_image_folder("data", n_train=1, n_val=1)
    common = ["--dataset", "imagenet", "--data_folder", "data", "--epochs", "1", "--batch_size", "3",
              "--num_workers", "0", "--seed", "0"]
    train_teacher.main(["--model", "resnet18", *common])
    run = "resnet18_imagenet_lr_0.001171875_decay_0.0001_trial_0"  # 0.1 x 3 / 256, wd 1e-4
    teacher = os.path.join("save", "models", run, "resnet18_last.pth")
    config = torch.load(teacher, weights_only=True)["config"]
    assert config["lr_decay_epochs"] == [30, 60, 90] and config["loader"] == "torchvision"

    last = train_student.main(["--path_t", teacher, "--model_s", "represnet18",
                               "--distill", "kdrefine", *common])
    folder = os.path.join("save", "student_model",
                          "S_represnet18_T_resnet18_imagenet_kdrefine_r_0.1_a_0.9_b_0.0_1")
    assert json.load(open(os.path.join(folder, "test_last_metrics.json")))["epoch"] == 1
    train_form = os.path.join(folder, "represnet18_last.pth")
    convert.main(["--load", train_form, "--save", "deploy.pth", "-a", "represnet18"])
    capsys.readouterr()
    data = ["--dataset", "imagenet", "--data_folder", "data", "--num_workers", "0"]
    acc_train = validation.main(["--model", "represnet18", "--model_path", train_form,
                                 "--deploy_flag", "False", *data])
    acc_deploy = validation.main(["--model", "represnet18", "--model_path", "deploy.pth", *data])
    assert acc_train == acc_deploy == pytest.approx(last["test_acc"])
    assert "top-5" in capsys.readouterr().out

    msg = _exit_line(capsys, train_student.main, ["--path_t", teacher, "--model_s", "represnet18",
                                                  "--distill", "crd", *common])
    assert "crd" in msg and "imagenet" in msg
    msg = _exit_line(capsys, train_teacher.main, ["--model", "resnet8", *common])
    assert "resnet18" in msg and "mobilenet_v1" in msg  # lists the ImageNet models
    msg = _exit_line(capsys, train_teacher.main, ["--model", "resnet18", "--loader", "device", *common])
    assert "torchvision" in msg


def test_imagenet_defaults():
    import train_teacher

    imagenet = train_teacher.parse_option(["--model", "resnet18", "--dataset", "imagenet"])
    optim = imagenet.optim
    assert (optim.epochs, optim.batch_size, optim.learning_rate, list(optim.lr_decay_epochs), optim.weight_decay,
            imagenet.data.loader) == (100, 256, 0.1, [30, 60, 90], 1e-4, "torchvision")
    cifar = train_teacher.parse_option(["--model", "MobileNetV2"])
    optim = cifar.optim
    assert (optim.epochs, optim.batch_size, optim.learning_rate, list(optim.lr_decay_epochs),
            optim.weight_decay, cifar.data.loader) == (240, 64, 0.01, [150, 180, 210], 5e-4, "device")
