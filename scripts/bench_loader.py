"""Images per second of the classic torchvision PIL pipeline (one process, ``num_workers=0``)
versus the device-resident loader, on generated CIFAR-100-format files in a temporary folder.

    python scripts/bench_loader.py [--n_train 10000] [--batch_size 64] [--device cpu]

Both loaders produce the same augmented float32 batches (RandomCrop(32, padding=4), flip,
normalize); the device loader's idea comes from airbench's CifarLoader.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.cifar100 import get_cifar100_dataloaders  # noqa: E402
from dataset.synthetic import write_fake_cifar100  # noqa: E402


def images_per_second(loader, device: torch.device, min_seconds: float) -> float:
    """Iterate whole epochs until ``min_seconds`` have passed; count images."""
    seen, start = 0, time.perf_counter()
    while True:
        for batch in loader:
            seen += batch[0].shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return seen / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_train", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min_seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: both pipelines on one core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        write_fake_cifar100(folder, n_train=args.n_train, n_test=100)
        classic, _, _ = get_cifar100_dataloaders(args.batch_size, 0, data_folder=folder,
                                                 loader="torchvision", device=device)
        fast, _, _ = get_cifar100_dataloaders(args.batch_size, 0, data_folder=folder,
                                              loader="device", device=device)
        next(iter(fast))  # warm-up
        slow_rate = images_per_second(classic, device, args.min_seconds)
        fast_rate = images_per_second(fast, device, args.min_seconds)
    print(f"torch threads: {torch.get_num_threads()}, batch size {args.batch_size}, "
          f"{args.n_train} images, device {device}")
    print(f"torchvision PIL pipeline (num_workers=0): {slow_rate:12,.0f} images/s")
    print(f"device loader:                            {fast_rate:12,.0f} images/s")
    print(f"ratio: {fast_rate / slow_rate:.1f}x")


if __name__ == "__main__":
    main()
