"""Run the real verifier (``sled verifier``) as a subprocess for the benchmark.

A subprocess keeps CPU accounting honest: the verifier's torch threads are its own,
and the driver (this process) stays a light asyncio loop. Readiness is the verifier's
retained ``VerifierStatus(online=True)`` on ``{prefix}/verifier/+/status``. CPU time
of the process is read from ``/proc`` so each measurement point can report how busy
the verifier was.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.threads import spin_environment
from runtime.transport import MqttConfig, MqttTransport
from schemas import Topics
from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.messages import VerifierStatus

_INSTANCES = itertools.count()


class VerifierStartError(RuntimeError):
    """The verifier process exited or did not come online in time."""


class VerifierProcess:
    """``sled verifier`` on ``model_dir``; use as a context manager.

    Configured through ``SLED_*`` environment variables (the verifier's documented
    config source), so the command line does not depend on flag spellings.
    """

    def __init__(
        self,
        model_dir: Path,
        mqtt: MqttConfig,
        topics: Topics,
        *,
        threads: int,
        log_path: Path,
        max_batch: int = 32,
        extra_args: tuple[str, ...] = (),
        start_timeout_s: float = 180.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.mqtt = mqtt
        self.topics = topics
        self.threads = threads
        self.log_path = log_path
        self.max_batch = max_batch
        self.extra_args = extra_args
        self.start_timeout_s = start_timeout_s
        self.settings = dict(settings or {})  # more config fields: {"dtype": "bfloat16"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.verifier_id = f"bench-{os.getpid()}-{next(_INSTANCES)}"  # one MQTT client id each

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sled.cli", "verifier", *self.extra_args]

    def environment(self) -> dict[str, str]:
        """The verifier's config as ``SLED_*`` variables (see ``verifier_node.config``)."""
        return {
            "SLED_MODEL_DIR": str(self.model_dir),
            "SLED_BROKER_URL": self.mqtt.url,
            "SLED_TOPIC_PREFIX": self.topics.prefix,
            "SLED_THREADS": str(self.threads),
            "SLED_VERIFIER_ID": self.verifier_id,
            "SLED_MAX_BATCH": str(self.max_batch),
            "SLED_LOG_LEVEL": "warning",
            **{"SLED_" + name.upper(): value for name, value in self.settings.items()},
        }

    def __enter__(self) -> VerifierProcess:
        env = dict(os.environ)
        env.update(self.environment())
        spin_environment(env)  # the verifier's own default, whatever the bench inherited
        env.update(
            OMP_NUM_THREADS=str(self.threads),
            MKL_NUM_THREADS=str(self.threads),
            TOKENIZERS_PARALLELISM="false",
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            asyncio.run(self._wait_online())
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _wait_online(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        cfg = self.mqtt.with_(persistent=False, client_id=None)
        async with MqttTransport(cfg) as bus:
            await bus.subscribe(self.topics.verifier_status(self.verifier_id))
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise VerifierStartError(
                        f"verifier exited at start; see {self.log_path}:\n{self._log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise VerifierStartError(
                        f"verifier not online after {self.start_timeout_s:g} s; "
                        f"see {self.log_path}:\n{self._log_tail()}"
                    )
                try:
                    # a fresh iterator each time: a timed-out anext() closes its generator
                    msg = await asyncio.wait_for(anext(bus.messages()), min(1.0, remaining))
                except TimeoutError:
                    continue
                try:
                    status = decode(msg.payload, expect=VerifierStatus)
                except SchemaError:
                    continue
                if status.online:
                    return

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def metric_sum(self, name: str) -> float:
        """Sum over labels of the Prometheus sample ``name`` (needs ``metrics_port`` in
        ``settings``); 0.0 when the endpoint or the sample is missing."""
        import urllib.request

        port = self.settings.get("metrics_port")
        if not port:
            return 0.0
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        total = 0.0
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            if head.split("{", 1)[0] == name:
                total += float(value)
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the verifier process so far, seconds."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    def wait_idle(self, max_s: float = 30.0, below_cores: float = 0.05) -> float:
        """Block until the verifier uses < ``below_cores`` CPU over 0.5 s; seconds waited.

        Work left over from a point (centralized sessions cannot be cancelled) must not
        run into the next point's measurement.
        """
        started = time.monotonic()
        while time.monotonic() - started < max_s:
            cpu0 = self.cpu_seconds()
            time.sleep(0.5)
            if (self.cpu_seconds() - cpu0) / 0.5 < below_cores:
                break
        return time.monotonic() - started

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
