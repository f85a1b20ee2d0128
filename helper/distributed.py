"""Data-parallel training across processes: ``torchrun`` detection, the process group and the
few collectives the loops need.

The entry scripts run unchanged under ``torchrun --nproc_per_node=N`` (and across machines with
torchrun's rendezvous flags). torchrun announces itself through the environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); with ``WORLD_SIZE > 1`` :func:`distributed` starts
the process group — NCCL on CUDA devices (one process per device, ``cuda:LOCAL_RANK``), gloo on
the CPU — and yields a :class:`DistContext`. Without torchrun (or with one process) the context
is the single-process one and every helper below is a no-op, so the scripts keep one code path.

A process that stops answering (stopped, hung, or on a lost node) must not leave the others
waiting forever: the group is started with a timeout (``--dist_timeout`` minutes), and a
collective that times out or loses its connection ends each surviving rank with one line
(:class:`~helper.errors.UserError`) that says to rerun with ``--resume``. On the CPU (gloo) a
blocked collective raises after the timeout. With NCCL the collectives run asynchronously on the
GPU and the host thread waits in a CUDA synchronisation, not in the collective: torch's NCCL
watchdog ends the process after the timeout (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default)
with its own log lines; a timeout that reaches Python as an exception (e.g. with
``TORCH_NCCL_BLOCKING_WAIT=1``) becomes the one line as with gloo.

Nothing here is a module-level switch: the context is a value handed to whatever needs it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

from helper.errors import UserError
from helper.util import resolve_device


def _env_int(environ: Mapping[str, str], key: str, default: int) -> int:
    value = environ.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {key}={value!r} is not an integer "
                        f"(it is set by torchrun)") from None


def env_world_size(environ: Mapping[str, str] | None = None) -> int:
    """Number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return max(1, _env_int(os.environ if environ is None else environ, "WORLD_SIZE", 1))


#: Minutes a collective waits for the other processes before the run ends (``--dist_timeout``).
DEFAULT_TIMEOUT_MINUTES = 30.0

# What torch's backends say when the other processes do not answer (gloo: "Timed out waiting
# 3000ms for recv operation"; the store: "Timed out after 4 seconds waiting for clients"; NCCL's
# watchdog: "collective operation timeout") or when the connection to one of them is gone.
_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_CONNECTION_LOST = re.compile(r"connection (reset|closed|refused|aborted)|closed by peer|"
                              r"broken pipe|end of file|no route to host", re.IGNORECASE)
_FROM_BACKEND = re.compile(r"gloo|nccl|processgroup|c10d|tcpstore", re.IGNORECASE)


def check_timeout(minutes: float) -> float:
    """``minutes`` as a float, or a :class:`UserError` unless it is a positive finite number."""
    try:
        value = float(minutes)
    except (TypeError, ValueError):
        raise UserError(f"--dist_timeout must be a number of minutes, got {minutes!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"--dist_timeout must be a positive number of minutes (e.g. 30, or 0.5 "
                        f"for 30 seconds), got {minutes!r}")
    return value


def lost_peer_error(err: BaseException, rank: int,
                    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> UserError | None:
    """The one-line :class:`UserError` for a collective that ``err`` ended because another
    process did not answer within the timeout or its connection was lost; None when ``err`` is
    something else (a bug or a user error, left as it is)."""
    if isinstance(err, UserError) or not isinstance(err, RuntimeError):
        return None
    text = str(err)
    if not (isinstance(err, dist.DistError) or _FROM_BACKEND.search(text)):
        return None
    advice = "rerun with --resume to continue from the last checkpoint"
    if _TIMED_OUT.search(text):
        return UserError(f"rank {rank}: no answer from the other processes within --dist_timeout "
                         f"{timeout_minutes:g} minutes (a process stopped or a node was lost); "
                         f"{advice}")
    if _CONNECTION_LOST.search(text) or isinstance(err, dist.DistNetworkError):
        return UserError(f"rank {rank}: lost the connection to the other processes (one of them "
                         f"exited or its node was lost; see its error, if any); {advice}")
    return None


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the training processes.

    ``rank`` is the global rank, ``local_rank`` the rank on this machine, ``device`` the device
    this process trains on. Rank 0 (:attr:`is_main`) alone writes files and prints.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES

    @property
    def enabled(self) -> bool:
        """True when several processes train together (collectives are real)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def _collective(self) -> Iterator[None]:
        """Turn a collective's timeout or lost connection into the one-line :class:`UserError`."""
        try:
            yield
        except RuntimeError as err:
            error = lost_peer_error(err, self.rank, self.timeout_minutes)
            if error is None:
                raise
            raise error from None

    # ----- collectives (no-ops with one process) -----
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all processes, as a new tensor (``tensor``
        itself is left alone, so running sums can be reduced more than once)."""
        total = tensor.clone()
        if self.enabled:
            with self._collective():
                dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` of every process concatenated along dim 0, in rank order (every process
        must pass the same shape)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        with self._collective():
            dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def broadcast_buffers(self, *modules: nn.Module) -> None:
        """Copy rank 0's buffers (BN statistics, memory banks) to every process, so all of them
        evaluate and save the same model. With :meth:`wrap`'s DDP (no per-forward buffer sync)
        and this call once per epoch, rank 0's buffers evolve exactly as under DDP's default
        per-forward broadcast, without a collective in every step."""
        if not self.enabled:
            return
        with self._collective():
            for module in modules:
                for buffer in module.buffers():
                    dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            with self._collective():
                if self.device.type == "cuda":
                    dist.barrier(device_ids=[self.device.index])
                else:
                    dist.barrier()

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged
        over processes in backward), or ``module`` itself with one process.

        Buffers are copied from rank 0 at construction but not in every forward: call
        :meth:`broadcast_buffers` before evaluating. The wrapper's ``state_dict`` carries a
        ``module.`` prefix: save ``module`` itself.
        """
        if not self.enabled:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=find_unused_parameters,
            **_no_forward_buffer_sync())

    def enable_sync(self, module: nn.Module) -> nn.Module:
        """Hand this context to the submodules that keep state outside autograd and can keep it
        identical on every process (those with a ``dist_context`` attribute, e.g. CRD's memory
        bank, which then applies every process's updates); returns ``module``."""
        if self.enabled:
            for sub in module.modules():
                if hasattr(sub, "dist_context"):
                    sub.dist_context = self
        return module


def _no_forward_buffer_sync() -> dict[str, bool]:
    """DDP's keyword for "sync buffers at construction, not in every forward":
    ``forward_sync_buffers=False`` where this torch has it, else ``broadcast_buffers=False``."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {key: False}


def context_from_env(device_flag: str | None = "auto",
                     environ: Mapping[str, str] | None = None) -> DistContext:
    """The context this process runs in, read from torchrun's environment (no group started).

    Under torchrun with several processes, ``--device auto``/``cuda`` mean ``cuda:LOCAL_RANK``
    (CPU with gloo when no GPU is present); ``cpu`` keeps every process on the CPU.
    """
    environ = os.environ if environ is None else environ
    world_size = env_world_size(environ)
    if world_size == 1:
        return DistContext(device=resolve_device(device_flag))
    if "RANK" not in environ or "LOCAL_RANK" not in environ:
        raise UserError(f"WORLD_SIZE={world_size} is set without RANK/LOCAL_RANK; launch the "
                        f"script with torchrun --nproc_per_node=N")
    rank, local_rank = _env_int(environ, "RANK", 0), _env_int(environ, "LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise UserError(f"RANK={rank} is outside 0..{world_size - 1}")
    name = device_flag or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA device is available; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local_rank} but this machine has "
                            f"{torch.cuda.device_count()} CUDA devices; start at most that many "
                            f"processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
    elif name == "cpu":
        device = torch.device("cpu")
    else:
        raise UserError(f"under torchrun each process uses cuda:LOCAL_RANK; pass --device auto, "
                        f"cuda or cpu, not --device {name}")
    return DistContext(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


@contextlib.contextmanager
def distributed(device_flag: str | None = "auto",
                timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES,
                environ: Mapping[str, str] | None = None) -> Iterator[DistContext]:
    """Start the process group when torchrun asked for several processes, yield the
    :class:`DistContext`, and tear the group down on the way out (also after an error).

    Every collective waits at most ``timeout_minutes`` (``--dist_timeout``; fractions allowed)
    for the other processes. A timeout or a lost connection inside the block, in the context's
    collectives or in DDP's gradient all-reduce, ends this rank with one line
    (:class:`UserError`) instead of a wait without end.

    Standard output of ranks other than 0 goes to ``os.devnull`` inside the block, so every
    message is printed once; errors (standard error) still come from every rank.
    """
    timeout_minutes = check_timeout(timeout_minutes)
    ctx = context_from_env(device_flag, environ)
    if not ctx.enabled:
        yield ctx
        return
    ctx = dataclasses.replace(ctx, timeout_minutes=timeout_minutes)
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    if backend == "nccl":
        _warn_if_nccl_timeout_is_off(ctx, os.environ if environ is None else environ)
    with ctx._collective():
        dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    try:
        with ctx._collective():  # DDP's all-reduce in backward, SyncBatchNorm, ...
            if ctx.is_main:
                yield ctx
            else:
                with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                    yield ctx
    finally:
        dist.destroy_process_group()


def _warn_if_nccl_timeout_is_off(ctx: DistContext, environ: Mapping[str, str]) -> None:
    """One line on stderr when the environment turns off what makes NCCL honour the timeout."""
    def on(key: str) -> bool:
        return environ.get(key, "").strip().lower() not in ("", "0", "false", "no")

    handling = environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", environ.get("NCCL_ASYNC_ERROR_HANDLING"))
    blocking = on("TORCH_NCCL_BLOCKING_WAIT") or on("NCCL_BLOCKING_WAIT")
    if handling is not None and handling.strip() == "0" and not blocking and ctx.is_main:
        print("warning: TORCH_NCCL_ASYNC_ERROR_HANDLING=0: a process that stops answering makes "
              "the others wait forever, --dist_timeout is not enforced", file=sys.stderr)
