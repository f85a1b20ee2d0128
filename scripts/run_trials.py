"""Run trials 1..n of a ``train_student.py`` command, skipping the finished ones.

    python scripts/run_trials.py -n 5 [--gpus 0,1,2,3] [--dry-run] -- \\
        python train_student.py --path_t save/models/resnet56_vanilla/ckpt_epoch_240.pth \\
        --model_s represnet20 --distill kdrefine -r 0.1 -a 0.9 -b 0

Each trial runs the command with ``--trial i`` set (any ``--trial`` in it is replaced). A trial
whose run folder ``save/student_model/S_<model_s>_T_<model_t>_..._<i>/`` (relative to the
current directory) already holds ``test_last_metrics.json`` is skipped, so an interrupted
benchmark is resumed by running the same line again. Without ``--gpus`` the trials run one
after the other with their output on the terminal; with ``--gpus`` one trial runs per listed
GPU at a time (``CUDA_VISIBLE_DEVICES`` set per process), each logging to ``run_trials.log``
in its run folder. The exit status is 1 when a trial failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.errors import UserError, exit_on_user_error  # noqa: E402
from helper.naming import (METRICS_FILE, STUDENT_NAME_DEFAULTS, STUDENT_SAVE_ROOT,  # noqa: E402
                           known_model_names, student_run_name, teacher_arch)

LOG_FILE = "run_trials.log"


@dataclass
class Trial:
    """One trial: its number, the command to run and the folder it saves to."""

    index: int
    command: list[str]
    run_folder: str

    @property
    def done(self) -> bool:
        return os.path.isfile(os.path.join(self.run_folder, METRICS_FILE))


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``argv`` at the first ``--`` into this script's flags and the training command."""
    parser = argparse.ArgumentParser(
        prog="run_trials.py", usage="%(prog)s -n N [--gpus IDS] [--dry-run] -- COMMAND ...",
        description="Run trials 1..N of a train_student.py command; finished trials (with "
                    f"{METRICS_FILE}) are skipped.")
    parser.add_argument("-n", "--trials", type=int, required=True, help="number of trials")
    parser.add_argument("--gpus", default=None,
                        help="comma-separated GPU ids: one trial per GPU at a time")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would run or be skipped, run nothing")
    if "--" not in argv:
        if {"-h", "--help"} & set(argv):
            parser.parse_args(["--help"])  # prints the help and exits 0
        parser.print_usage(sys.stderr)
        raise UserError("put the train_student.py command after '--'")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise UserError("no command after '--'; give the train_student.py command to repeat")
    if args.trials < 1:
        raise UserError(f"-n must be at least 1, got {args.trials}")
    if args.gpus is not None:
        args.gpus = [g.strip() for g in args.gpus.split(",")]
        if not all(args.gpus):
            raise UserError(f"--gpus takes comma-separated ids such as 0,1,2; got {argv}")
    return args, command


def command_options(command: list[str]) -> argparse.Namespace:
    """The flags of ``command`` that name its run folder, with train_student.py's defaults."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--model_s")
    parser.add_argument("--path_t")
    parser.add_argument("--model_t")
    parser.add_argument("--dataset", default=STUDENT_NAME_DEFAULTS["dataset"])
    parser.add_argument("--distill", default=STUDENT_NAME_DEFAULTS["distill"])
    parser.add_argument("-r", "--gamma", default=STUDENT_NAME_DEFAULTS["gamma"])
    parser.add_argument("-a", "--alpha", default=STUDENT_NAME_DEFAULTS["alpha"])
    parser.add_argument("-b", "--beta", default=STUDENT_NAME_DEFAULTS["beta"])
    try:
        opt, _ = parser.parse_known_args(command)
    except argparse.ArgumentError as err:
        raise UserError(f"cannot read the training command: {err}") from None
    for flag in ("model_s", "path_t"):
        if not getattr(opt, flag):
            raise UserError(f"the command needs --{flag} (it names the run folder)")
    for flag in ("gamma", "alpha", "beta"):
        try:
            setattr(opt, flag, float(getattr(opt, flag)))
        except ValueError:
            raise UserError(f"--{flag} takes a number, got {getattr(opt, flag)!r}") from None
    if not opt.model_t:
        opt.model_t = teacher_arch(opt.path_t, known_model_names())
    return opt


def with_trial(command: list[str], index: int) -> list[str]:
    """``command`` with any ``--trial X`` / ``--trial=X`` removed and ``--trial index`` added."""
    out: list[str] = []
    skip = False
    for token in command:
        if skip:
            skip = False
        elif token == "--trial":
            skip = True
        elif not token.startswith("--trial="):
            out.append(token)
    return out + ["--trial", str(index)]


def plan_trials(command: list[str], n: int) -> list[Trial]:
    """Trials 1..n of ``command`` with their run folders."""
    opt = command_options(command)
    trials = []
    for i in range(1, n + 1):
        opt.trial = str(i)
        trials.append(Trial(i, with_trial(command, i),
                            os.path.join(STUDENT_SAVE_ROOT, student_run_name(opt))))
    return trials


def run_sequential(trials: list[Trial]) -> list[Trial]:
    """Run the trials one by one on the terminal; return the failed ones."""
    failed = []
    for trial in trials:
        print(f"[run_trials] trial {trial.index}: {' '.join(trial.command)}", flush=True)
        if subprocess.run(trial.command, check=False).returncode != 0:
            failed.append(trial)
    return failed


def run_on_gpus(trials: list[Trial], gpus: list[str], poll_s: float = 0.2) -> list[Trial]:
    """Run one trial per GPU at a time, logging to the run folders; return the failed ones."""
    pending, free = list(trials), list(gpus)
    running: dict[subprocess.Popen, tuple[Trial, str]] = {}
    failed = []
    try:
        while pending or running:
            while pending and free:
                trial, gpu = pending.pop(0), free.pop(0)
                os.makedirs(trial.run_folder, exist_ok=True)
                log_path = os.path.join(trial.run_folder, LOG_FILE)
                print(f"[run_trials] trial {trial.index} on GPU {gpu} (log: {log_path})",
                      flush=True)
                env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
                with open(log_path, "w") as log:
                    proc = subprocess.Popen(trial.command, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
                running[proc] = (trial, gpu)
            finished = [p for p in running if p.poll() is not None]
            for proc in finished:
                trial, gpu = running.pop(proc)
                free.append(gpu)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                print(f"[run_trials] trial {trial.index} on GPU {gpu}: {status}", flush=True)
                if proc.returncode != 0:
                    failed.append(trial)
            if not finished:
                time.sleep(poll_s)
    finally:
        for proc in running:  # only reached with children left on an interrupt or error
            proc.terminate()
    return failed


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    trials = plan_trials(command, args.trials)
    todo = []
    for trial in trials:
        if trial.done:
            print(f"[run_trials] trial {trial.index}: skipped, "
                  f"{os.path.join(trial.run_folder, METRICS_FILE)} exists")
        else:
            todo.append(trial)
    if args.dry_run:
        for trial in todo:
            gpu = "" if args.gpus is None else "CUDA_VISIBLE_DEVICES=<one of {}> ".format(
                ",".join(args.gpus))
            print(f"[run_trials] trial {trial.index}: would run {gpu}{' '.join(trial.command)}"
                  f"  (saves to {trial.run_folder})")
        return 0
    failed = run_sequential(todo) if args.gpus is None else run_on_gpus(todo, args.gpus)
    ran = len(todo) - len(failed)
    print(f"[run_trials] {ran} ran, {len(trials) - len(todo)} skipped, {len(failed)} failed"
          + (f" (trials {', '.join(str(t.index) for t in failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
