"""scripts/benchmark.py runs both paths and reports the documented JSON keys; the --compile
plumbing of the training step works (with dynamo's eager backend, which skips code generation
so it runs in seconds on a CPU), including the last partial batch."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(*extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                          "--teacher", "resnet8", "--student", "represnet8", "--distill", "kdrefine",
                          "--device", "cpu", "--steps", "2", "--warmup", "1", "--n_train", "256",
                          "--json", *extra], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_benchmark_json_keys():
    result = run_benchmark()
    for key in ("device", "classic_img_s", "fast_img_s", "ratio", "projected_240_epochs_s", "peak_mem_mb"):
        assert key in result
    assert result["classic_img_s"] > 0 and result["fast_img_s"] > 0
    assert result["ratio"] == pytest.approx(result["fast_img_s"] / result["classic_img_s"], rel=0.01)
    assert result["projected_240_epochs_s"] == pytest.approx(240 * 50000 / result["fast_img_s"], rel=0.01)


def test_benchmark_trials_reports_the_cost_of_n_runs():
    result = run_benchmark("--trials", "2", "--skip_classic")
    assert result["trials"] == 2 and result["trials_img_s"] > 0
    assert result["trials_projected_240_epochs_s"] == pytest.approx(
        2 * 240 * 50000 / result["trials_img_s"], rel=0.01)
    assert result["trials_cost_in_runs"] == pytest.approx(
        result["trials_projected_240_epochs_s"] / result["projected_240_epochs_s"], rel=0.01)


def test_compiled_step_matches_eager_with_partial_last_batch(monkeypatch):
    import engine.distill as distill
    from distiller_zoo import build_method
    from engine.loops import to_batch
    from models import model_dict
    from types import SimpleNamespace

    monkeypatch.setattr(distill, "compile_fn", lambda fn, device: torch.compile(fn, backend="eager"))
    torch.manual_seed(0)
    teacher = distill.freeze(model_dict["resnet8"](num_classes=10))
    student = model_dict["represnet8"](num_classes=10, fused=False)
    opt = SimpleNamespace(kd_T=4.0, logit_stand=False, gamma=0.1, alpha=0.9, beta=0.0, batch_size=64)
    method = build_method("kdrefine", opt, student, teacher, [], [], 100)
    weights = distill.loss_weights(opt)
    eager = distill.DistillStep(student, teacher, method, weights)
    compiled = distill.DistillStep(student, teacher, method, weights, compile=True)
    student.train()
    for n in (8, 8, 5):  # the last partial batch changes the shape
        data = (torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
        loss_e, logits_e = eager(to_batch(data, torch.device("cpu")), 1)
        loss_c, logits_c = compiled(to_batch(data, torch.device("cpu")), 1)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits_c, logits_e, rtol=1e-5, atol=1e-5)
