"""``--dist_timeout``: a process that stops answering (SIGSTOP, a lost node) or dies ends every
other rank within the timeout with one ``error:`` line, instead of a wait without end; the run
then continues with ``--resume``."""
from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import train_student
import train_teacher
from helper.distributed import DistContext, check_timeout, distributed, lost_peer_error
from helper.checkpoint import load_checkpoint
from helper.errors import UserError
from tests.cifar_fixtures import write_fake_cifar100
from tests.cli_helpers import exit_message

ROOT = Path(__file__).resolve().parents[1]
RUN = os.path.join("save", "models", "resnet8_cifar100_lr_0.05_decay_0.0005_trial_0")
TIMEOUT = "0.05"  # minutes: 3 s


# ---- the flag and the messages ----------------------------------------------------------------

def test_flag_default_and_validation(capsys):
    assert train_teacher.parse_option([]).run.dist_timeout == 30.0
    assert train_student.parse_option(["--path_t", "t.pth", "--dist_timeout", "0.5"]).run.dist_timeout == 0.5
    for bad in ("0", "-1", "nan", "inf"):
        line = exit_message(capsys, train_teacher.main, ["--dist_timeout", bad, "--device", "cpu"])
        assert line.startswith(f"error: --dist_timeout {bad}: ") and "must be a positive number of minutes" in line
    assert check_timeout(0.05) == 0.05
    with pytest.raises(UserError, match="--dist_timeout"):
        with distributed("cpu", 0.0, environ={}):
            pass
    with distributed("cpu", 0.05, environ={}) as ctx:  # one process: no group, no timeout needed
        assert not ctx.enabled


GLOO_TIMEOUT = ("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
                "waiting 3000ms for recv operation to complete")
GLOO_RESET = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
              "[127.0.0.1]:2476: Connection reset by peer. This is typically caused by ...")


def test_lost_peer_errors_become_one_line():
    timed_out = lost_peer_error(RuntimeError(GLOO_TIMEOUT), 1, 0.1)
    assert isinstance(timed_out, UserError)
    assert str(timed_out) == ("rank 1: no answer from the other processes within --dist_timeout "
                              "0.1 minutes (a process stopped or a node was lost); rerun with "
                              "--resume to continue from the last checkpoint")
    store = dist.DistStoreError("Timed out after 4 seconds waiting for clients. 1/2 clients joined.")
    assert "no answer" in str(lost_peer_error(store, 0))
    nccl = dist.DistBackendError("[Rank 0] Watchdog caught collective operation timeout: "
                                 "WorkNCCL(SeqNum=5, OpType=ALLREDUCE) ran for 3000 milliseconds")
    assert "within --dist_timeout 30 minutes" in str(lost_peer_error(nccl, 0))
    assert "lost the connection" in str(lost_peer_error(RuntimeError(GLOO_RESET), 0))
    # anything else is left as it is: bugs keep their traceback, user errors their own line
    assert lost_peer_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 0) is None
    assert lost_peer_error(RuntimeError("DataLoader timed out after 5 seconds"), 0) is None
    assert lost_peer_error(UserError("loss became nan"), 0) is None
    assert lost_peer_error(ValueError(GLOO_TIMEOUT), 0) is None


def test_collective_wrappers_convert_timeouts(monkeypatch):
    ctx = DistContext(torch.device("cpu"), rank=1, world_size=2, timeout_minutes=0.05)

    def hang(*args, **kwargs):
        raise RuntimeError(GLOO_TIMEOUT)

    for name in ("all_reduce", "all_gather", "broadcast", "barrier"):
        monkeypatch.setattr(dist, name, hang)
    calls = [lambda: ctx.all_reduce_sum(torch.ones(2)), lambda: ctx.all_gather(torch.ones(2)),
             lambda: ctx.broadcast_buffers(torch.nn.BatchNorm1d(2)), ctx.barrier]
    for call in calls:
        with pytest.raises(UserError, match=r"^rank 1: no answer .* --dist_timeout 0.05 minutes"):
            call()
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="^bug$"):
        ctx.all_reduce_sum(torch.ones(2))


# ---- two gloo processes on the CPU, one of them stopped or killed -----------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_ranks(cwd: Path, *args: str) -> list[subprocess.Popen]:
    """Two ranks of ``train_teacher.py`` with torchrun's environment (each rank a child of the
    test, so one can be stopped and each one's stderr read)."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
               "PYTHONUNBUFFERED": "1", "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "train_teacher.py"), "--model", "resnet8", "--device", "cpu",
             "--batch_size", "16", "--print_freq", "4", "--seed", "0", "--num_workers", "0", *args],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_for_line(proc: subprocess.Popen, prefix: str, limit: float) -> list[str]:
    """Rank 0's stdout up to the first line starting with ``prefix``."""
    lines, deadline = [], time.monotonic() + limit
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith(prefix):
                return lines
    raise AssertionError(f"no {prefix!r} line from rank 0 within {limit} s: {''.join(lines)[-2000:]}"
                         f"{proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")


@pytest.fixture
def cifar_dir(tmp_path):
    write_fake_cifar100(tmp_path / "data", n_train=256, n_test=64, seed=0)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_lost_rank_ends_the_survivor_with_one_line(cifar_dir, how, monkeypatch, capsys):
    """Rank 1 stopped (SIGSTOP: a hung process or a lost node) or killed (its connection gone)
    after the first epoch: rank 0 ends within the timeout with one line and a non-zero exit, no
    traceback; ``--resume`` then continues the run from its last checkpoint."""
    procs = _start_ranks(cifar_dir, "--epochs", "30", "--dist_timeout", TIMEOUT)
    survivor, lost = procs
    try:
        _wait_for_line(survivor, "epoch   1/30", limit=60)
        lost.send_signal(signal.SIGSTOP if how == "stopped" else signal.SIGKILL)
        stopped = time.monotonic()
        try:
            _, err = survivor.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            survivor.kill()
            raise AssertionError(f"rank 0 still waits 30 s after rank 1 was {how} "
                                 f"(--dist_timeout {TIMEOUT})") from None
        elapsed = time.monotonic() - stopped
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL also ends a stopped process
            proc.communicate()
    lines = [line for line in err.splitlines() if line.strip()]
    assert survivor.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    if how == "stopped":
        assert lines[0] == ("error: rank 0: no answer from the other processes within "
                            f"--dist_timeout {TIMEOUT} minutes (a process stopped or a node was "
                            "lost); rerun with --resume to continue from the last checkpoint")
        assert 1 < elapsed < 20, elapsed  # the timeout (3 s), not a wait without end
    else:
        assert lines[0].startswith("error: rank 0: lost the connection to the other processes")
        assert lines[0].endswith("rerun with --resume to continue from the last checkpoint")
        assert elapsed < 20, elapsed

    if how == "stopped":  # --resume continues the two-process run, here in one process
        epoch = load_checkpoint(str(cifar_dir / RUN / "resnet8_last.pth"))["epoch"]
        monkeypatch.chdir(cifar_dir)
        capsys.readouterr()
        last = train_teacher.main(["--model", "resnet8", "--device", "cpu", "--batch_size", "16",
                                   "--print_freq", "100", "--seed", "0", "--num_workers", "0",
                                   "--epochs", str(epoch + 1), "--resume"])
        out = capsys.readouterr().out
        assert last["epoch"] == epoch + 1 and f"at epoch {epoch}" in out, out[-2000:]
