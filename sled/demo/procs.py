"""The demo's node processes: ``sled verifier`` and ``sled edge`` as subprocesses.

Each node runs exactly the command a user (or docker compose) would run, in its own
process session (so a Ctrl-C in the terminal reaches only the demo, which then stops
the nodes in order: edges, verifier, broker). On Linux a node also gets
``PR_SET_PDEATHSIG``, so it dies if the demo itself is killed. Output goes to a log
file per node.

A node is configured with flags only: ``SLED_*`` variables of the caller's environment
are not passed on, so a stray ``SLED_CONFIG`` cannot change the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

STOP_TIMEOUT_S = 10.0  # wait for a clean exit after SIGINT, then SIGKILL (seconds)
POLL_S = 0.05  # process exit polling period (seconds)
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return preexec


def node_env(extra: Mapping[str, str] | None = None, *, threads: int = 1) -> dict[str, str]:
    """The caller's environment without ``SLED_*``, plus thread limits and offline HF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLED_")}
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OMP_WAIT_POLICY="PASSIVE",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def sled_command(*args: str) -> list[str]:
    """``sled ARGS…`` with this interpreter (works without the ``sled`` script on PATH)."""
    return [sys.executable, "-m", "sled.cli", *args]


class NodeProcess:
    """One node subprocess: start, watch, stop (SIGINT, then SIGKILL after a timeout)."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str]
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_s = 0.0

    def start(self) -> None:
        """Launch (call from the main thread: the death signal follows the forking thread)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        self.started_s = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        """None while running (or never started)."""
        return self.proc.poll() if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGINT (the nodes' clean stop), wait up to ``timeout_s``, then SIGKILL."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)  # a Popen has no awaitable exit
        if proc.poll() is None:
            self.kill()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL now and reap (the last resort; also used after a second Ctrl-C)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
