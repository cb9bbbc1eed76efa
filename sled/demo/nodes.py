"""The demo's node processes: ``sled verifier`` (the demo target) and one ``sled edge``
per device (its ONNX drafter, threshold and max_draft), all pointed at one broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.transport import MqttConfig
from sled.demo.config import TARGET_DIR, VERIFIER_ID, DemoConfig, DemoError
from sled.demo.procs import NodeProcess, node_env, sled_command
from sled.demo.stats import DeviceSpec
from sled.demo.view import View


class DemoNodes:
    """Start, watch and stop the demo's nodes; their logs go to ``log_dir``."""

    def __init__(self, config: DemoConfig, log_dir: Path, view: View) -> None:
        self.config = config
        self.log_dir = log_dir
        self.view = view
        self.nodes: list[NodeProcess] = []

    @property
    def first_started_s(self) -> float:
        """When the first node was started (``time.monotonic()``)."""
        return min(n.started_s for n in self.nodes)

    def verifier_argv(self, mqtt: MqttConfig) -> list[str]:
        cfg = self.config
        argv = sled_command(
            "verifier",
            "--model-dir", str(cfg.models_dir / TARGET_DIR),
            "--broker-url", mqtt.url,
            "--mqtt-protocol", mqtt.protocol,
            "--topic-prefix", cfg.prefix,
            "--verifier-id", VERIFIER_ID,
            "--threads", str(cfg.verifier_threads),
            "--log-level", cfg.log_level,
        )  # fmt: skip
        return argv

    def edge_argv(self, spec: DeviceSpec, mqtt: MqttConfig) -> list[str]:
        cfg = self.config
        argv = sled_command(
            "edge",
            "--device-id", spec.device,
            "--drafter-dir", str(cfg.models_dir / spec.drafter),
            "--broker-url", mqtt.url,
            "--mqtt-protocol", mqtt.protocol,
            "--topic-prefix", cfg.prefix,
            "--threshold", str(spec.threshold),
            "--max-draft", str(spec.max_draft),
            "--max-new-tokens", str(cfg.max_new_tokens),
            "--threads", "1",
            "--log-level", cfg.log_level,
        )  # fmt: skip
        return argv

    def _credentials(self) -> dict[str, str]:
        """The broker login as the nodes' env variables (not flags: ``ps`` shows flags)."""
        cfg = self.config
        out = {}
        if cfg.username:
            out["SLED_USERNAME"] = cfg.username
        if cfg.password:
            out["SLED_PASSWORD"] = cfg.password
        return out

    def start(self, mqtt: MqttConfig) -> None:
        """Launch the verifier and the edge nodes (from the event loop's thread)."""
        threads = self.config.verifier_threads
        verifier = NodeProcess(
            "verifier",
            self.verifier_argv(mqtt),
            self.log_dir / "verifier.log",
            node_env(self._credentials(), threads=threads),
        )
        self.nodes.append(verifier)
        verifier.start()
        target = self.config.models_dir / TARGET_DIR
        self.view.event(f"verifier: target {target} (pid {verifier.pid})")
        for spec in self.config.devices:
            node = NodeProcess(
                spec.device,
                self.edge_argv(spec, mqtt),
                self.log_dir / f"{spec.device}.log",
                node_env(self._credentials(), threads=1),
            )
            self.nodes.append(node)
            node.start()
            self.view.event(f"{spec.device}: {spec.label} (pid {node.pid})")

    def check_alive(self) -> None:
        """Raise DemoError (with its log's last lines) when a node has exited."""
        for node in self.nodes:
            code = node.returncode
            if code is not None:
                raise DemoError(
                    f"{node.name} exited with status {code}; last lines of {node.log_path}:\n"
                    f"{node.log_tail()}"
                )

    async def stop(self) -> None:
        """Edges first (they publish offline), then the verifier; bounded waits."""
        edges = [n for n in self.nodes if n.name != "verifier"]
        await asyncio.gather(*(n.stop() for n in edges))
        await asyncio.gather(*(n.stop() for n in self.nodes if n.name == "verifier"))

    def kill(self) -> None:
        """SIGKILL whatever still runs (after an interrupted stop)."""
        for node in self.nodes:
            node.kill()
