"""Inference speed of a converted rep student versus its plain counterpart (eval mode, CPU).

    python scripts/bench_deploy_speed.py [--model represnet20] [--plain resnet20]
                                         [--batch_size 64] [--threads 1] [--min_seconds 3]

After ``reparameterize_model`` a rep student has the plain network's convs (each with a bias
and no BN), so it should run as fast as the plain model. Also timed, for reference: the same
student in training form (eval mode), with its blocks folded on the fly (``fused``) and with
the branches run one by one (``separate``). If the plain model is not registered, an
equivalently built deploy model (``deploy=True``) stands in for it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="represnet20", help="re-parameterizable student")
    parser.add_argument("--plain", default="resnet20", help="its plain counterpart")
    parser.add_argument("--blocktype", default="AMBB")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--min_seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32)

    student = model_dict[args.model](blocktype=args.blocktype)
    rates = {
        f"{args.model} train form, separate branches": images_per_second(
            set_fused(student, False), x, args.min_seconds),
        f"{args.model} train form, folded on the fly": images_per_second(
            set_fused(student, True), x, args.min_seconds),
    }
    converted = reparameterize_model(student)
    rates[f"{args.model} converted (deploy)"] = images_per_second(converted, x, args.min_seconds)
    if args.plain in model_dict:
        plain, plain_label = model_dict[args.plain](), f"{args.plain} (plain)"
    else:
        plain = model_dict[args.model](blocktype=args.blocktype, deploy=True)
        plain_label = f"{args.model}(deploy=True) standing in for missing {args.plain}"
    rates[plain_label] = images_per_second(plain, x, args.min_seconds)

    print(f"CPU, torch threads {torch.get_num_threads()}, batch size {args.batch_size}, "
          f"block type {args.blocktype}, eval mode")
    width = max(map(len, rates))
    for label, rate in rates.items():
        print(f"{label:<{width}}  {rate:10,.0f} images/s")


if __name__ == "__main__":
    main()
