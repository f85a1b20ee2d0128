"""scripts/benchmark.py runs both paths (and ``--trials``) and reports the documented JSON keys;
the --compile plumbing of the training step works (with dynamo's eager backend, which skips code
generation so it runs in seconds on a CPU), including the last partial batch, and returns the
step's terms."""
import contextlib
import io
import json

import pytest
import torch

import engine.distill as distill
import train_student
from engine.loops import StepOutput, to_batch
from models import model_dict
from scripts import benchmark


@pytest.fixture(scope="module")
def result() -> dict:
    """The JSON line the script prints for one run over both paths and ``--trials 2`` (2 timed
    steps of 16 images each: the figures' arithmetic, not the speed, is under test); in this
    process, which already holds torch and the project (a subprocess spends seconds loading them)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        benchmark.main(["--teacher", "resnet8", "--student", "represnet8", "--distill", "kdrefine",
                        "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch_size", "16",
                        "--n_train", "64", "--trials", "2", "--json"])
    return json.loads(printed.getvalue().strip().splitlines()[-1])


def test_benchmark_json_keys(result):
    for key in ("device", "classic_img_s", "fast_img_s", "ratio", "projected_240_epochs_s", "peak_mem_mb"):
        assert key in result
    assert result["classic_img_s"] > 0 and result["fast_img_s"] > 0
    assert result["ratio"] == pytest.approx(result["fast_img_s"] / result["classic_img_s"], rel=0.01)
    assert result["projected_240_epochs_s"] == pytest.approx(240 * 50000 / result["fast_img_s"], rel=0.01)


def test_benchmark_trials_reports_the_cost_of_n_runs(result):
    assert result["trials"] == 2 and result["trials_img_s"] > 0
    assert result["trials_projected_240_epochs_s"] == pytest.approx(
        2 * 240 * 50000 / result["trials_img_s"], rel=0.01)
    assert result["trials_cost_in_runs"] == pytest.approx(
        result["trials_projected_240_epochs_s"] / result["projected_240_epochs_s"], rel=0.01)


def test_compiled_step_matches_eager_with_partial_last_batch(monkeypatch):
    """The compiled step gives the eager step's loss, logits and terms (unweighted, detached),
    also when the last partial batch changes the shape (a recompilation)."""
    monkeypatch.setattr(distill, "compile_fn", lambda fn, device: torch.compile(fn, backend="eager"))
    config = train_student.parse_option(["--path_t", "t.pth", "--model_s", "represnet8",
                                         "--distill", "kdrefine"])
    torch.manual_seed(0)
    teacher = distill.freeze(model_dict["resnet8"](num_classes=10))
    student = model_dict["represnet8"](num_classes=10, fused=False)
    method = distill.build_method_for(config, student, teacher, torch.randn(2, 3, 32, 32), 100)
    weights = distill.loss_weights(config.method)
    assert (weights["cls"], weights["div"], weights["kd"]) == (0.1, 0.9, 0.0)  # kdrefine's recipe
    eager = distill.DistillStep(student, teacher, method, weights)
    compiled = distill.DistillStep(student, teacher, method, weights, compile=True)
    student.train()
    for n in (8, 8, 5):  # the last partial batch changes the shape
        batch = to_batch((torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))), torch.device("cpu"))
        out_e, out_c = eager(batch, 1), compiled(batch, 1)
        (loss_e, logits_e), (loss_c, logits_c) = out_e, out_c
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits_c, logits_e, rtol=1e-5, atol=1e-5)
        assert isinstance(out_c, StepOutput) and set(out_c.terms) == {"cls", "div", "kd"}
        for name in out_e.terms:
            assert not out_c.terms[name].requires_grad
            torch.testing.assert_close(out_c.terms[name], out_e.terms[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss_c, 0.1 * out_c.terms["cls"] + 0.9 * out_c.terms["div"])
