"""MLKD (``--distill mlkd``): its loss equals the authors' released code on fixed logits, plain
and with logit standardization (``tests/fixtures/peer_reference/mlkd_loss.json``, README there),
except for the one slip it departs from, whose difference is checked; the method's wiring."""
from __future__ import annotations

import json
import os

import pytest
import torch

import distiller_zoo as dz
from distiller_zoo.mlkd import MLKDLoss, confidence_fractions
from distiller_zoo.methods import SharedParams
from distiller_zoo.methods.multi_level import MLKDParams

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "peer_reference", "mlkd_loss.json")
RUNS = [(c, r) for c in json.load(open(FIXTURE))["cases"] for r in c["runs"]]
IDS = [f"B{len(c['target'])}-{'ls' if r['logit_stand'] else 'plain'}-kd{r['kd_weight']:g}" for c, r in RUNS]


def logits(case: dict) -> tuple[torch.Tensor, ...]:
    views = [torch.tensor(case[k], dtype=torch.float32) for k in ("s_weak", "s_strong", "t_weak", "t_strong")]
    return (*views, torch.tensor(case["target"]))


def close(ours: torch.Tensor, theirs: float) -> None:
    torch.testing.assert_close(ours, torch.tensor(theirs), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("case, run", RUNS, ids=IDS)
def test_loss_equals_the_authors_code(case, run):
    """With the released slip reproduced, every loss group equals the authors' (their
    ``loss_ce``, ``loss_kd``, ``loss_bc``, ``loss_cc``, each with its weight); by default the
    strong view's instance terms at 2 and 6 read the strong logits, which differs from the
    authors' by exactly those four KL terms of their own ``kd_loss``."""
    s_weak, s_strong, t_weak, t_strong, target = logits(case)
    temperatures = [run["base_T"], 3.0, 5.0, 2.0, 6.0]
    ce_w, kd_w, theirs = run["ce_weight"], run["kd_weight"], run["loss"]
    released = MLKDLoss(temperatures, logit_stand=run["logit_stand"], released_slip=True)(
        s_weak, s_strong, t_weak, t_strong, target)
    close(ce_w * released.ce, theirs["loss_ce"])
    close(kd_w * released.instance, theirs["loss_kd"])
    close(kd_w * released.batch, theirs["loss_bc"])
    close(kd_w * released.class_level, theirs["loss_cc"])
    paper = MLKDLoss(temperatures, logit_stand=run["logit_stand"])(s_weak, s_strong, t_weak, t_strong, target)
    kd = run["kd_terms"]
    moved = kd["strong_T2"] + kd["strong_T6"] - kd["weak_T2"] - kd["weak_T6"]
    assert abs(moved) > 0.05  # the slip changes the loss
    close(kd_w * paper.instance, theirs["loss_kd"] + kd_w * moved)
    for name in ("ce", "batch", "class_level"):
        assert torch.equal(getattr(paper, name), getattr(released, name))


def test_confidence_masks_keep_the_fraction_at_or_below_the_median():
    """The masks enter as the fraction of samples (classes) whose teacher confidence is at or
    below the median: half of an even batch, (n+1)/2 of an odd one, more on ties."""
    same = torch.tensor([[4.0, 0, 0, 0, 0]]).repeat(4, 1)
    samples, _ = confidence_fractions(same)  # 4 equally confident samples: all kept
    assert float(samples) == 1.0
    logit_t = torch.tensor([[3.0, 0, 0], [2.0, 0, 0], [1.0, 0, 0], [0.5, 0, 0], [0.1, 0, 0]])
    samples, classes = confidence_fractions(logit_t)
    assert float(samples) == pytest.approx(3 / 5) and float(classes) == pytest.approx(2 / 3)
    samples, _ = confidence_fractions(logit_t[:4])
    assert float(samples) == 0.5


def build(logit_stand: bool = False, **params) -> dz.Distiller:
    net = torch.nn.Linear(4, 10)
    kd_T = 2.0 if logit_stand else 4.0
    return dz.methods.build_distiller("mlkd", SharedParams(kd_T=kd_T, logit_stand=logit_stand),
                                      MLKDParams(**params), net, net, [], [], 10)


def test_method_terms_weights_and_flags():
    """``cls`` = CE of both views, ``div`` = instance level, ``kd`` = batch + class level; the
    recipe weights the last two with the authors' one KD weight (0.9; 9 with --logit_stand, base
    temperature 2); ``--mlkd_temperatures`` and ``--mlkd_released_slip`` reach the loss; without a
    strong view the weak one stands in."""
    cls = dz.get_method("mlkd")
    assert cls.needs_strong_view and not cls.needs_feats and cls.supports_logit_stand
    assert (cls.recipe.gamma, cls.recipe.alpha, cls.recipe.beta, cls.recipe.kd_T) == (0.1, 0.9, 0.9, 4.0)
    ls = cls.recipe_for(True)
    assert (ls.gamma, ls.alpha, ls.beta, ls.kd_T) == (0.1, 9.0, 9.0, 2.0)
    assert cls.recipe.learning_rate == ls.learning_rate == 0.025
    method = build(mlkd_temperatures="3, 5,2,6.5", mlkd_released_slip=1)
    assert method.criterion_kd.temperatures == (4.0, 3.0, 5.0, 2.0, 6.5) and method.criterion_kd.released_slip
    g = torch.Generator().manual_seed(0)
    s, t, s2, t2 = (torch.randn(6, 10, generator=g) for _ in range(4))
    y = torch.randint(0, 10, (6,), generator=g)
    method = build(logit_stand=True)
    terms = method(None, s, None, t, y, 1, logit_s_strong=s2, logit_t_strong=t2)
    loss = MLKDLoss([2.0, 3.0, 5.0, 2.0, 6.0], logit_stand=True)(s, s2, t, t2, y)
    assert set(terms) == {"cls", "div", "kd"}
    assert torch.equal(terms["cls"], loss.ce) and torch.equal(terms["div"], loss.instance)
    assert torch.equal(terms["kd"], loss.batch + loss.class_level)
    alone = method(None, s, None, t, y, 1)
    assert torch.equal(alone["div"], MLKDLoss([2.0, 3.0, 5.0, 2.0, 6.0], logit_stand=True)(s, s, t, t, y).instance)


@pytest.mark.parametrize("bad", ["", "3,0", "a,b", "3,-1", "inf"])
def test_bad_temperatures_are_one_line_at_parsing(bad, capsys):
    import train_student
    with pytest.raises(SystemExit) as exit_info:
        train_student.parse_option(["--path_t", "t.pth", "--distill", "mlkd", "--mlkd_temperatures", bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mlkd_temperatures" in err[0]


# ---- through train_student.py ----------------------------------------------------------------

FAST = ["--num_workers", "0", "--seed", "0", "--print_freq", "1000", "--model_s", "resnet8", "--distill", "mlkd"]


def random_teacher(root, classes: int) -> str:
    """A random resnet8 teacher file in RepDistiller's layout (the architecture from its folder)."""
    from models import model_dict

    folder = root / "save" / "models" / "resnet8_vanilla"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"model": model_dict["resnet8"](num_classes=classes).state_dict()}, folder / "ckpt_epoch_240.pth")
    return str(folder / "ckpt_epoch_240.pth")


def printed_config(capsys, *flags: str) -> dict:
    import train_student

    assert train_student.main(["--path_t", "save/models/resnet8_vanilla/ckpt_epoch_240.pth", *FAST, *flags,
                               "--print_config"]) == {}
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_print_config_shows_the_recipes(capsys):
    plain = printed_config(capsys)
    assert (plain["gamma"], plain["alpha"], plain["beta"], plain["kd_T"]) == (0.1, 0.9, 0.9, 4.0)
    assert (plain["learning_rate"], plain["mlkd_temperatures"], plain["mlkd_released_slip"]) == (0.025, "3,5,2,6", 0)
    ls = printed_config(capsys, "--logit_stand", "--mlkd_temperatures", "3, 5,2 ,6.5")
    assert (ls["gamma"], ls["alpha"], ls["beta"], ls["kd_T"], ls["learning_rate"]) == (0.1, 9.0, 9.0, 2.0, 0.025)
    assert ls["logit_stand"] and ls["mlkd_temperatures"] == "3,5,2,6.5"


def test_trains_on_digits_with_both_views(tmp_path, monkeypatch):
    """Two digits epochs with --logit_stand through train_student.py (each loader cut to its first
    batch, for time): every step's loss reads the student's and the teacher's logits of a strong
    view, not the weak one's, and the run saves its metrics with the logit-standardization recipe."""
    import train_student
    from dataset.device_loader import DeviceLoader
    from distiller_zoo.methods.multi_level import MLKD

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(DeviceLoader, "__len__", lambda self: 1)
    teacher = random_teacher(tmp_path, 10)
    seen = []
    forward = MLKD.forward

    def recording(self, feat_s, logit_s, feat_t, logit_t, *args, **views):
        seen.append((views["logit_s_strong"].shape == logit_s.shape, not torch.equal(views["logit_t_strong"], logit_t)))
        return forward(self, feat_s, logit_s, feat_t, logit_t, *args, **views)

    monkeypatch.setattr(MLKD, "forward", recording)
    last = train_student.main(["--path_t", teacher, *FAST, "--dataset", "digits", "--epochs", "2",
                               "--lr_decay_epochs", "1", "--batch_size", "128", "--logit_stand"])
    assert seen == [(True, True)] * 2
    folder = tmp_path / "save" / "student_model" / "S_resnet8_T_resnet8_digits_mlkd_ls_r_0.1_a_9.0_b_9.0_1"
    metrics = json.loads((folder / "test_last_metrics.json").read_text())
    assert metrics["epoch"] == 2 and last["test_acc"] == metrics["test_acc"]
    assert metrics["config"]["kd_T"] == 2.0 and metrics["config"]["logit_stand"]


def test_trials_and_resume(tmp_path, monkeypatch):
    """``--trials 2`` (the teacher's forward shared over both trials' two views) trains trial 1 as
    a run of its own does, stopped after one epoch and resumed: the same weights."""
    import train_student
    from tests.cifar_fixtures import write_fake_cifar100

    write_fake_cifar100(tmp_path / "data", n_train=64, n_test=32, seed=0)
    teacher = random_teacher(tmp_path, 100)
    common = ["--path_t", teacher, *FAST, "--data_folder", str(tmp_path / "data"), "--batch_size", "32",
              "--lr_decay_epochs", "1"]
    for name in ("whole", "parts"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "whole")
    train_student.main([*common, "--epochs", "2", "--trials", "2", "--trials_mode", "shared_teacher"])
    monkeypatch.chdir(tmp_path / "parts")
    train_student.main([*common, "--epochs", "1"])
    train_student.main([*common, "--epochs", "2", "--resume"])
    folder = os.path.join("save", "student_model", "S_resnet8_T_resnet8_cifar100_mlkd_r_0.1_a_0.9_b_0.9_{}")
    resumed = torch.load(folder.format(1) + "/resnet8_last.pth", weights_only=True)
    straight = torch.load(tmp_path / "whole" / folder.format(1) / "resnet8_last.pth", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 2
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    other = torch.load(tmp_path / "whole" / folder.format(2) / "resnet8_last.pth", weights_only=True)
    assert not torch.equal(other["model"]["fc.weight"], straight["model"]["fc.weight"])


def test_the_teacher_sees_both_views_in_one_forward():
    """``DistillStep.teacher_for``: one teacher forward over every batch's weak and strong images
    gives each batch the logits of each view; a method that reads no strong view gets none."""
    from engine.distill import DistillStep, freeze
    from engine.loops import Batch, to_batch

    torch.manual_seed(0)
    teacher = freeze(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)))
    batches = [to_batch(((torch.randn(3, 3, 2, 2), torch.randn(3, 3, 2, 2)), torch.arange(3)), torch.device("cpu"))
               for _ in range(2)]
    assert all(b.strong is not None for b in batches)
    net = torch.nn.Linear(4, 10)
    mlkd = build()
    kd = dz.methods.build_distiller("kd", SharedParams(), None, net, net, [], [], 10)
    outputs = DistillStep(torch.nn.Linear(1, 1), teacher, mlkd, {}).teacher_for(batches)
    for b, (feat, logit, strong) in zip(batches, outputs):
        assert feat is None
        torch.testing.assert_close(logit, teacher(b.images))
        torch.testing.assert_close(strong, teacher(b.strong))
    assert [o[2] for o in DistillStep(torch.nn.Linear(1, 1), teacher, kd, {}).teacher_for(batches)] == [None, None]
    assert to_batch((torch.randn(2, 3, 2, 2), torch.arange(2)), torch.device("cpu")).strong is None
    assert isinstance(batches[0], Batch)
