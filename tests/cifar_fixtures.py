"""Test access to the CIFAR-format file writer (it lives in :mod:`dataset.synthetic`, where the
benchmark scripts use it too)."""
from dataset.synthetic import (py2_pickle_bytes, write_fake_cifar100,  # noqa: F401
                               write_fake_cifar100_archive)
