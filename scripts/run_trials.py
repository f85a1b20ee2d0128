"""Run trials 1..n of a ``train_student.py`` command, skipping the finished ones.

    python scripts/run_trials.py -n 5 [--gpus 0,1,2,3] [--dry_run] -- \\
        python train_student.py --path_t save/models/resnet56_vanilla/ckpt_epoch_240.pth \\
        --model_s represnet20 --distill kdrefine -r 0.1 -a 0.9 -b 0 [--seed S]

Each trial runs the command with ``--trial i`` set (any ``--trial`` in it is replaced) and, when
the command gives ``--seed S``, with ``--seed S+i-1``: exactly the trials and seeds of
``train_student.py --trial 1 --trials n --seed S`` (:func:`engine.trials.trial_configs`: trial
``1+k`` gets seed ``S+k``), so the folders of either agree; without ``--seed`` the trials are
unseeded, each with its trial's data order, as there. Two trials that would train with one seed
(a seed the runner could not set) are refused before anything runs. Its
resolved configuration comes from running it with ``--print_config`` (one JSON line, no
training); the run folder is the configuration's ``save_folder`` (else
``save/student_model/<run name of the configuration>``), relative to the current directory.
What happens to trial i then depends on that folder:

- ``test_last_metrics.json`` of a finished run (``reached_epoch`` >= ``planned_epochs``) with
  the same result-relevant configuration (:func:`helper.provenance.config_differences`; the
  teacher compared by the sha256 of its file): skipped;
- the same configuration, unfinished: continued with ``--resume`` when ``<model_s>_last.pth``
  is there, else run again with ``--overwrite``;
- ``<model_s>_last.pth`` without metrics: continued with ``--resume``;
- metrics of a *different* configuration: the runner stops before running anything, with one
  line naming the folder and the difference (``epochs: 2 in the folder, 240 in the command``);
- metrics without recorded settings (older files): finished when their ``epoch`` equals the
  command's ``epochs``, else continued with ``--resume`` from a ``_last.pth``; without one the
  runner stops (it cannot tell what the folder holds);
- nothing: run.

So an interrupted benchmark is resumed by running the same line again. Without ``--gpus`` the
trials run one after the other with their output on the terminal; with ``--gpus`` one trial
runs per listed GPU at a time (``CUDA_VISIBLE_DEVICES`` set per process), each logging to
``run_trials.log`` in its run folder. The exit status is 1 when a trial failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.errors import UserError, exit_on_user_error  # noqa: E402
from helper.naming import METRICS_FILE, STUDENT_SAVE_ROOT, run_name_of  # noqa: E402
from helper.provenance import (config_differences, describe_differences,  # noqa: E402
                               file_sha256, is_finished, load_metrics, result_settings,
                               run_config, teacher_sha256)

LOG_FILE = "run_trials.log"
# Settings compared between a command and the ``config`` of a ``_last.pth`` it would resume
# (that ``config`` is the training's namespace, which holds derived entries too; these are
# the ones it keeps as given).
CHECKPOINT_KEYS = ("model_s", "model_t", "dataset", "distill", "blocktype", "gamma", "alpha",
                   "beta", "kd_T", "epochs", "learning_rate", "lr_decay_epochs", "lr_decay_rate",
                   "weight_decay", "momentum", "batch_size", "trial", "plugin", "dot", "dot_delta")
SKIP, RUN, RESUME, OVERWRITE = "skip", "run", "resume", "overwrite"


@dataclass
class Trial:
    """One trial: its number, its resolved configuration, the folder it saves to and what to
    do with it (``action``, ``reason``)."""

    index: int
    base_command: list[str]
    config: dict
    run_folder: str
    action: str = RUN
    reason: str = ""

    @property
    def command(self) -> list[str]:
        extra = {RESUME: ["--resume"], OVERWRITE: ["--overwrite"]}.get(self.action, [])
        return self.base_command + extra

    @property
    def done(self) -> bool:
        return self.action == SKIP

    @property
    def last_path(self) -> str:
        return os.path.join(self.run_folder, f"{self.config.get('model_s')}_last.pth")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``argv`` at the first ``--`` into this script's flags and the training command."""
    parser = argparse.ArgumentParser(
        prog="run_trials.py", usage="%(prog)s -n N [--gpus IDS] [--dry_run] -- COMMAND ...",
        description="Run trials 1..N of a train_student.py command; finished trials of the "
                    f"same configuration (with {METRICS_FILE}) are skipped, interrupted ones "
                    "resumed.")
    parser.add_argument("-n", "--trials", type=int, required=True, help="number of trials")
    parser.add_argument("--gpus", default=None,
                        help="comma-separated GPU ids: one trial per GPU at a time")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                        help="print what would run or be skipped, run nothing (--dry-run is "
                             "an alias)")
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


def _without(command: list[str], flag: str) -> list[str]:
    """``command`` with every ``flag X`` / ``flag=X`` removed."""
    out: list[str] = []
    skip = False
    for token in command:
        if skip:
            skip = False
        elif token == flag:
            skip = True
        elif not token.startswith(flag + "="):
            out.append(token)
    return out


def base_seed(command: list[str]) -> int | None:
    """The ``--seed`` the command gives (its last, as argparse reads it), or None when it gives
    none or one that is not an integer (``--print_config`` then names the mistake)."""
    seed = None
    for k, token in enumerate(command):
        if token == "--seed" and k + 1 < len(command):
            seed = command[k + 1]
        elif token.startswith("--seed="):
            seed = token.split("=", 1)[1]
    try:
        return None if seed is None else int(seed)
    except ValueError:
        return None


def with_trial(command: list[str], index: int, seed: int | None = None) -> list[str]:
    """``command`` with any ``--trial X`` / ``--trial=X`` removed and ``--trial index`` added;
    with ``seed``, any ``--seed`` likewise replaced by ``--seed seed``."""
    out = _without(command, "--trial") + ["--trial", str(index)]
    return out if seed is None else _without(out, "--seed") + ["--seed", str(seed)]


def trial_commands(command: list[str], n: int) -> list[list[str]]:
    """The commands of trials 1..n: trial ``i`` with ``--seed S+i-1`` when the command gives
    ``--seed S`` (as ``train_student.py --trial 1 --trials n --seed S`` seeds them)."""
    seed = base_seed(command)
    return [with_trial(command, i, None if seed is None else seed + i - 1) for i in range(1, n + 1)]


def check_distinct_seeds(trials: list[Trial]) -> None:
    """Refuse trials that would train with one seed: they would be the same run, not
    independent trials."""
    first: dict[str, int] = {}
    for trial in trials:
        seed = trial.config.get("seed")
        if seed is None:
            continue
        key = json.dumps(seed)
        if key in first:
            raise UserError(f"trials {first[key]} and {trial.index} would both train with seed "
                            f"{key}, which makes them one run twice: give the seed as --seed S "
                            "(trial i then gets S+i-1) or leave it out")
        first[key] = trial.index


def resolved_config(command: list[str]) -> dict:
    """The configuration ``command`` would train with: its ``--print_config`` JSON line."""
    shown = " ".join(command + ["--print_config"])
    try:
        result = subprocess.run(command + ["--print_config"], capture_output=True, text=True,
                                check=False)
    except FileNotFoundError:
        raise UserError(f"cannot run {command[0]}: no such program") from None
    except PermissionError:
        raise UserError(f"cannot run {command[0]}: not executable") from None
    except OSError as err:
        raise UserError(f"cannot run {command[0]}: {err.strerror or err}") from None
    if result.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else "no message"
        raise UserError(f"the command failed with --print_config (exit {result.returncode}): "
                        f"{last}")
    for line in reversed(result.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                config = json.loads(line)
            except ValueError:
                continue
            if isinstance(config, dict):
                return config
    raise UserError(f"{shown} printed no configuration (one JSON line); is it train_student.py?")


def run_folder(config: dict) -> str:
    """Where a run of ``config`` saves: its ``save_folder``, else the name of its settings."""
    if isinstance(config.get("save_folder"), str) and config["save_folder"]:
        return config["save_folder"]
    try:
        return os.path.join(STUDENT_SAVE_ROOT, run_name_of(config))
    except (AttributeError, TypeError) as err:
        raise UserError(f"the command's configuration names no run folder ({err})") from None


class TeacherHashes:
    """sha256 of teacher files, each hashed once (None when the file is not there)."""

    def __init__(self):
        self._known: dict[str, str | None] = {}

    def __call__(self, path: object) -> str | None:
        if not isinstance(path, str):
            return None
        if path not in self._known:
            try:
                self._known[path] = file_sha256(path)
            except OSError:
                self._known[path] = None
        return self._known[path]


def checkpoint_config(path: str) -> dict | None:
    """The ``config`` recorded in a ``_last.pth``, or None when it has none or is unreadable."""
    try:
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not written by this code, torch missing, ...: nothing to check against
        return None
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(config, dict):
        return None
    config = dict(config)
    if "base_learning_rate" in config:  # the checkpoint keeps the per-process rate there
        config["learning_rate"] = config["base_learning_rate"]
    return config


def _decide_without_metrics(trial: Trial, resume_or: tuple[str, str] | None) -> str | None:
    """No metrics file yet: resume from the last checkpoint, if any and made the same way."""
    if resume_or is None:
        return None
    old = checkpoint_config(trial.last_path)
    if old is not None:
        config = trial.config
        keys = [k for k in CHECKPOINT_KEYS if k in old and k in config]
        diffs = config_differences({k: old[k] for k in keys}, {k: config[k] for k in keys})
        if diffs:
            return (f"{trial.last_path} was written with a different configuration: "
                    f"{describe_differences(diffs, 'in the checkpoint')}")
    trial.action, trial.reason = resume_or
    return None


def _decide_unrecorded(trial: Trial, metrics: dict, metrics_path: str,
                       resume_or: tuple[str, str] | None) -> str | None:
    """An older metrics file without recorded settings: only its last epoch can be checked."""
    epoch, planned = metrics.get("epoch"), trial.config.get("epochs")
    if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch == planned:
        trial.action = SKIP
        trial.reason = f"{metrics_path} exists (no recorded settings; epoch {epoch})"
        return None
    if resume_or:
        trial.action, trial.reason = resume_or
        return None
    return (f"{trial.run_folder} holds {METRICS_FILE} of epoch {epoch} without recorded settings "
            f"and no {os.path.basename(trial.last_path)} to resume, but the command plans "
            f"{planned} epochs; move the folder away to rerun this trial")


def _decide_unfinished(trial: Trial, metrics: dict, has_last: bool) -> None:
    """A run of the same configuration that stopped early: resume it, or run it again."""
    reached = metrics.get("reached_epoch", metrics.get("epoch"))
    planned = metrics.get("planned_epochs", trial.config.get("epochs"))
    if has_last:
        trial.action = RESUME
        trial.reason = f"unfinished (epoch {reached} of {planned}), continuing from " \
                       f"{trial.last_path}"
    else:
        trial.action = OVERWRITE
        trial.reason = f"unfinished (epoch {reached} of {planned}) and no " \
                       f"{os.path.basename(trial.last_path)}: running it again"


def decide(trial: Trial, hashes: TeacherHashes) -> str | None:
    """Set ``trial.action``/``reason`` from its folder; return a conflict message, if any."""
    folder, config = trial.run_folder, trial.config
    metrics_path = os.path.join(folder, METRICS_FILE)
    has_last = os.path.isfile(trial.last_path)
    resume_or = (RESUME, f"continuing from {trial.last_path}") if has_last else None

    if not os.path.lexists(metrics_path):
        return _decide_without_metrics(trial, resume_or)
    try:
        metrics = load_metrics(metrics_path)  # refuses a FIFO or device without blocking
    except (OSError, ValueError) as err:
        if resume_or and os.path.isfile(metrics_path):
            trial.action, trial.reason = resume_or
            return None
        if resume_or:  # not a regular file: training would trip over it too
            return f"{metrics_path} is unreadable ({err}); move it away to continue the trial"
        return (f"{metrics_path} is unreadable ({err}) and there is no {trial.last_path} to "
                "resume; move the folder away to rerun this trial")

    recorded = run_config(metrics)
    if recorded is None:
        return _decide_unrecorded(trial, metrics, metrics_path, resume_or)
    sha_folder, sha_command = teacher_sha256(metrics), hashes(config.get("path_t"))
    both = sha_folder is not None and sha_command is not None
    diffs = config_differences(result_settings(recorded, sha_folder if both else None),
                               result_settings(config, sha_command if both else None))
    if diffs:
        return (f"{folder} holds a run of a different configuration: "
                f"{describe_differences(diffs)}; move the folder away or change the command")
    if is_finished(metrics) is False:
        _decide_unfinished(trial, metrics, has_last)
        return None
    trial.action, trial.reason = SKIP, f"{metrics_path} exists"
    return None


def plan_trials(command: list[str], n: int) -> list[Trial]:
    """Trials 1..n of ``command`` with their configurations, folders and actions."""
    commands = trial_commands(command, n)
    workers = max(1, min(n, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # each --print_config starts a Python process
        configs = list(pool.map(resolved_config, commands))
    trials = []
    for i, (cmd, config) in enumerate(zip(commands, configs), 1):
        if isinstance(config.get("trials"), int) and config["trials"] > 1:
            raise UserError("run_trials.py runs one trial per process: drop --trials "
                            f"{config['trials']} from the command (or use it without run_trials)")
        trials.append(Trial(i, cmd, config, run_folder(config)))
    check_distinct_seeds(trials)
    hashes = TeacherHashes()
    conflicts = [(t, msg) for t in trials if (msg := decide(t, hashes)) is not None]
    if conflicts:
        trial, msg = conflicts[0]
        more = f" (and {len(conflicts) - 1} more trials)" if len(conflicts) > 1 else ""
        raise UserError(f"trial {trial.index}: {msg}{more}")
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
                with open(log_path, "a" if trial.action == RESUME else "w") as log:
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
            print(f"[run_trials] trial {trial.index}: skipped, {trial.reason}")
        else:
            todo.append(trial)
            if trial.action != RUN:
                print(f"[run_trials] trial {trial.index}: {trial.reason}")
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
