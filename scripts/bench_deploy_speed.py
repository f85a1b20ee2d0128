"""Inference speed of a rep student's forms versus its plain counterpart, in PyTorch and in ONNX
Runtime (eval mode, CPU, one thread by default), at batch 1 and batch 64, in one sitting.

    python scripts/bench_deploy_speed.py [--model represnet20] [--plain resnet20] [--blocktype AMBB]
                                         [--batch_sizes 1,64] [--threads 1] [--min_seconds 2] [--json]

Forms timed (images/s; random weights, random 32x32 inputs):

* the student's training form in eval mode, branches run one by one (``separate``) and folded
  into one conv on the fly (``folded on the fly``, what ``fused="auto"`` does in eval mode);
* the PyTorch deploy form (after ``reparameterize_model``) and the plain architecture;
* ONNX Runtime (``CPUExecutionProvider``, ``intra_op_num_threads=--threads``) running the
  deploy form and the plain architecture, exported as ``convert.py --onnx`` exports them
  (:func:`helper.onnx_io.export_onnx`: BN folded, dynamic batch).

After ``reparameterize_model`` a rep student has the plain network's convs (each with a bias and
no BN), so its deploy form should run as fast as the plain model. If ``--plain`` is not
registered, an equivalently built deploy model (``deploy=True``) stands in for it. Prints a
Markdown table (``--json``: one JSON object instead) with the machine it ran on.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.onnx_io import OnnxRuntimeModel, export_onnx, runtime_version  # noqa: E402
from models import model_dict, reparameterize_model  # noqa: E402
from models.rep_blocks import set_fused  # noqa: E402


@torch.no_grad()
def images_per_second(model: torch.nn.Module, x: torch.Tensor, min_seconds: float) -> float:
    """Repeat forward passes until ``min_seconds`` have passed (after two warm-up passes)."""
    model.eval()
    for _ in range(2):
        model(x)
    seen, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        model(x)
        seen += x.shape[0]
    return seen / (time.perf_counter() - start)


def build_forms(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """Label -> callable model for every form timed, in table order."""
    torch.manual_seed(0)
    student = model_dict[args.model](blocktype=args.blocktype).eval()
    deployed = reparameterize_model(copy.deepcopy(student))
    if args.plain in model_dict:
        plain, plain_label = model_dict[args.plain]().eval(), args.plain
    else:
        plain = model_dict[args.model](blocktype=args.blocktype, deploy=True).eval()
        plain_label = f"{args.model}(deploy=True) standing in for missing {args.plain}"
    onnx_deploy = export_onnx(deployed, 32, f"{args.model} (deploy form)").SerializeToString()
    onnx_plain = export_onnx(plain, 32, f"{plain_label} (plain)").SerializeToString()
    train = f"PyTorch {args.model} train form ({args.blocktype})"
    return {
        f"{train}, separate branches": set_fused(copy.deepcopy(student), False),
        f"{train}, folded on the fly": set_fused(student, True),
        f"PyTorch {args.model} deploy form": deployed,
        f"PyTorch {plain_label} (plain)": plain,
        f"ONNX Runtime {args.model} deploy form": OnnxRuntimeModel(onnx_deploy, threads=args.threads),
        f"ONNX Runtime {plain_label} (plain)": OnnxRuntimeModel(onnx_plain, threads=args.threads),
    }


def measure(forms: dict[str, torch.nn.Module], batch_sizes: list[int], min_seconds: float) -> list[dict]:
    """One row per form: ``{'form': label, 'images_per_s': {batch: rate}}``."""
    rows = []
    for label, model in forms.items():
        rates = {}
        for batch in batch_sizes:
            x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
            rates[batch] = images_per_second(model, x, min_seconds)
        rows.append({"form": label, "images_per_s": rates})
    return rows


def machine(threads: int) -> dict:
    """What the figures were measured with."""
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": threads, "torch": torch.__version__, "onnxruntime": runtime_version(),
            "python": platform.python_version()}


def markdown(rows: list[dict], batch_sizes: list[int], reference: str) -> str:
    """The table: images/s per batch size, and the ratio to the plain PyTorch model at each."""
    ref = next(row for row in rows if row["form"] == reference)["images_per_s"]
    head = ["form"] + [f"batch {b} (img/s)" for b in batch_sizes] + [f"batch {b} vs plain PyTorch"
                                                                    for b in batch_sizes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        rates = row["images_per_s"]
        cells = [row["form"]] + [f"{rates[b]:,.0f}" for b in batch_sizes] + [
            f"{rates[b] / ref[b]:.2f}×" for b in batch_sizes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="represnet20", help="re-parameterizable student")
    parser.add_argument("--plain", default="resnet20", help="its plain counterpart")
    parser.add_argument("--blocktype", default="AMBB")
    parser.add_argument("--batch_sizes", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime CPU threads")
    parser.add_argument("--min_seconds", type=float, default=2.0, help="timing per form and batch size")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    forms = build_forms(args)
    rows = measure(forms, args.batch_sizes, args.min_seconds)
    info = machine(args.threads)
    if args.json:
        print(json.dumps({"machine": info, "model": args.model, "plain": args.plain,
                          "blocktype": args.blocktype, "rows": rows}))
        return
    print(f"CPU ({info['cpu']}, {info['cpu_count']} cores), {args.threads} thread(s), torch {info['torch']}, "
          f"ONNX Runtime {info['onnxruntime']}, eval mode, block type {args.blocktype}\n")
    print(markdown(rows, args.batch_sizes, list(forms)[3]))


if __name__ == "__main__":
    main()
