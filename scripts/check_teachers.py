"""Check that teacher checkpoints load into their architectures (strict keys and shapes).

Usage: python scripts/check_teachers.py save/models/resnet56_vanilla/ckpt_epoch_240.pth [...]
The architecture comes from the file's 'arch' entry, else from its RepDistiller folder name.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.checkpoint import load_checkpoint  # noqa: E402
from helper.errors import exit_on_user_error  # noqa: E402
from engine.model_io import count_parameters, load_model_from_file  # noqa: E402
from helper.naming import teacher_arch_from_path  # noqa: E402
from models import model_dict  # noqa: E402


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    for path in parser.parse_args(argv).paths:
        ckpt = load_checkpoint(path)
        arch = ckpt.get("arch") if isinstance(ckpt, dict) and isinstance(ckpt.get("arch"), str) else None
        arch = arch or teacher_arch_from_path(path, list(model_dict))
        model, _ = load_model_from_file(path, arch)
        acc = ckpt.get("accuracy") if isinstance(ckpt, dict) else None
        acc_text = f", recorded accuracy {float(acc):.2f}" if acc is not None else ""
        print(f"ok {path}: {arch}, {count_parameters(model)} parameters{acc_text}")


if __name__ == "__main__":
    main()
