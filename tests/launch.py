"""Running psrl in a subprocess the way users do (``python -m psrl``, ``accelerate launch``) on this machine's CPUs:
one environment, one two-process launcher, one free port, one wait for a run's first metrics."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# on a CPU-only machine --multi_gpu still launches through torchrun (gloo); --cpu would go through MPI. The module
# form needs no `accelerate` script on PATH.
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
ACCELERATE_2 = [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]


def psrl_env(**extra: str) -> dict[str, str]:
    """The environment of a psrl subprocess: this checkout's ``src`` first on the path, one thread per process (two
    ranks on two cores would thrash), no hub, and no inherited ``CUDA_VISIBLE_DEVICES`` (the launcher assigns
    devices to its ranks)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it, so concurrent test runs do not collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_psrl(*args: str, launcher: list[str] = ACCELERATE_2) -> list[str]:
    """The command line ``accelerate launch <launcher flags> --main_process_port <free> -m psrl <args>``."""
    return [*launcher, "--main_process_port", str(free_port()), "-m", "psrl", *args]


def wait_for_lines(proc: subprocess.Popen, path: Path, lines: int, timeout: float, poll: float = 0.2) -> None:
    """Block until ``path`` holds ``lines`` lines (a run's metrics rows, a stage's manifest), ``proc`` exits, or
    ``timeout`` seconds pass, whichever comes first, looking every ``poll`` seconds; the caller asserts what it
    needs."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_file() and path.read_text().count("\n") >= lines:
            return
        time.sleep(poll)
