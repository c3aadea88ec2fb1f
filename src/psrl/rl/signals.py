"""Graceful stop on SIGINT (Ctrl-C) and SIGTERM (what SLURM, Kubernetes and ``accelerate launch`` send before a
kill): the trainer finishes or abandons the current step, writes a checkpoint and exits 130 / 143.

The handler only records the signal; the training loop asks :meth:`StopSignals.requested` at safe points (before
any weight changes in a step, and after the step), with every process agreeing through one all-reduce, so all
ranks save the same step together. A second Ctrl-C while the checkpoint is being written is not swallowed: it
raises ``KeyboardInterrupt`` at once (the user asked twice).
"""
from __future__ import annotations

import logging
import signal
import threading

import torch

from psrl.errors import PsrlError
from psrl.rl import distributed as dist

logger = logging.getLogger(__name__)

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, the shell convention


class TrainingStopped(PsrlError):
    """Raised after a run stopped on a signal and saved its checkpoint; ``exit_code`` is 130 or 143."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """Context manager that turns SIGINT/SIGTERM into a stop request (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):  # noqa: ARG002 - signal handler signature
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum
        logger.warning("received %s: finishing the current step, then saving a checkpoint (Ctrl-C again to abort "
                       "without saving)", signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self) -> int | None:
        """The signal number any process received (agreed over all processes), else ``None``. Collective: every
        process must call it at the same point."""
        value = self.signum or 0
        if dist.is_distributed():
            t = torch.tensor([value], dtype=torch.long, device=dist.comm_device(torch.zeros(1)))
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            value = int(t)
        return value or None


__all__ = ["EXIT_CODES", "StopSignals", "TrainingStopped"]
