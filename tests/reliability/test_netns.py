"""Network faults between hosts: broker, verifier and edge node in their own namespaces.

Topology (all created here, all addresses inside them; nothing else is touched)::

    ns broker   (10.213.N.1, Mosquitto + the app)  ─┐
    ns verifier (10.213.N.2, sled verifier)         ├─ veth ─ bridge in ns hub
    ns edge     (10.213.N.3, sled edge)            ─┘

* **partition**: the hub end of the edge's link goes down for 5 s mid-generation
  (packets vanish, as on a real network; needs only ``ip``, no qdisc);
* **loss and delay**: ``tc netem`` on both ends of the edge's link, when the kernel has
  ``sch_netem`` (skipped with the reason otherwise).

Needs root and ``ip netns`` (iproute2); skips with the reason when they are missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.mosquitto import mosquitto_binary
from schemas import ResultChunk, ResultFinal, decode
from tests.reliability.app import GreedyReference, Stream, assert_lossless
from tests.reliability.conftest import Models, require_mosquitto
from tests.reliability.procs import (
    CHILD_ENV,
    REPO_ROOT,
    EdgeProcess,
    EdgeSpec,
    NodeProcess,
    VerifierProcess,
    VerifierSpec,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(240)]

PROMPT = "In the beginning God created the heaven"
MAX_NEW = 48
PARTITION_S = 5.0
PORT = 1883


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command (iproute2) with a bounded wait."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=check)


def require_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("ip netns unavailable: needs root")
    if shutil.which("ip") is None:
        pytest.skip("ip netns unavailable: iproute2 is not installed")
    probe = f"sledprobe{uuid.uuid4().hex[:6]}"
    got = sh("ip", "netns", "add", probe, check=False)
    if got.returncode != 0:
        pytest.skip(f"ip netns unavailable: {got.stderr.strip()}")
    sh("ip", "netns", "del", probe, check=False)


@dataclass
class NetLab:
    """Namespaces, links and the node processes of one test module."""

    tag: str
    subnet: int
    namespaces: dict[str, str] = field(default_factory=dict)  # role -> namespace name
    links: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (hub end, node end)
    nodes: list[NodeProcess] = field(default_factory=list)

    def ip(self, role: str) -> str:
        return f"10.213.{self.subnet}.{ {'broker': 1, 'verifier': 2, 'edge': 3}[role] }"

    @property
    def broker_url(self) -> str:
        return f"mqtt://{self.ip('broker')}:{PORT}"

    def build(self) -> None:
        hub = self.namespaces["hub"] = f"sl{self.tag}-hub"
        sh("ip", "netns", "add", hub)
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        for role in ("broker", "verifier", "edge"):
            ns = self.namespaces[role] = f"sl{self.tag}-{role[0]}"
            sh("ip", "netns", "add", ns)
            hub_end, node_end = f"h{self.tag}{role[0]}", f"n{self.tag}{role[0]}"
            # Created directly inside the namespaces: nothing appears in the root one.
            sh("ip", "-n", hub, "link", "add", hub_end, "type", "veth",
               "peer", "name", node_end, "netns", ns)  # fmt: skip
            sh("ip", "-n", hub, "link", "set", hub_end, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(role)}/24", "dev", node_end)
            sh("ip", "-n", ns, "link", "set", node_end, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.links[role] = (hub_end, node_end)

    def link(self, role: str, up: bool) -> None:
        """Cut (or restore) ``role``'s link at the hub: its packets vanish."""
        sh("ip", "-n", self.namespaces["hub"], "link", "set", self.links[role][0],
           "up" if up else "down")  # fmt: skip

    def netem(self, role: str, spec: str | None) -> None:
        """``tc netem SPEC`` on both ends of ``role``'s link (None: remove)."""
        hub_end, node_end = self.links[role]
        for ns, dev in ((self.namespaces["hub"], hub_end), (self.namespaces[role], node_end)):
            if spec is None:
                sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            else:
                sh("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root",
                   "netem", *spec.split())  # fmt: skip

    def netem_error(self) -> str | None:
        """Why netem cannot be used here (None: it can)."""
        if shutil.which("tc") is None:
            return "tc is not installed (apt-get install -y iproute2)"
        ns, dev = self.namespaces["edge"], self.links["edge"][1]
        got = sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
                 "netem", "delay", "1ms", check=False)  # fmt: skip
        if got.returncode != 0:
            return f"tc netem unavailable (kernel without sch_netem?): {got.stderr.strip()}"
        self.netem("edge", None)
        return None

    def destroy(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        for ns in self.namespaces.values():
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def lab(rel_models: Models, rel_logs: Path) -> Iterator[NetLab]:
    """Namespaces with Mosquitto, a verifier and an edge node running, one per namespace."""
    require_netns()
    require_mosquitto()
    lab = NetLab(tag=uuid.uuid4().hex[:4], subnet=int(uuid.uuid4().int % 200) + 20)
    with tempfile.TemporaryDirectory(prefix="sled-netns-") as tmp:
        try:
            lab.build()
            os.chmod(tmp, 0o777)  # mosquitto drops root privileges
            conf = Path(tmp) / "mosquitto.conf"
            conf.write_text(
                f"listener {PORT} {lab.ip('broker')}\nallow_anonymous true\n"
                "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            )
            broker = NodeProcess(
                [mosquitto_binary(), "-c", str(conf)],
                rel_logs / f"netns-mosquitto-{lab.tag}.log",
                netns=lab.namespaces["broker"],
            )
            broker.name = "mosquitto"
            lab.nodes.append(broker.start())
            prefix = f"netns/{lab.tag}/sled/v1"
            verifier = VerifierProcess(
                VerifierSpec(rel_models.target, lab.broker_url, prefix, verifier_id="vn"),
                rel_logs,
                netns=lab.namespaces["verifier"],
            )
            edge = EdgeProcess(
                EdgeSpec(rel_models.drafter, lab.broker_url, prefix, device_id="pi-far",
                         fallback_after=1_000_000, timeout_ceiling_ms=1000),
                rel_logs,
                netns=lab.namespaces["edge"],
            )  # fmt: skip
            time.sleep(0.3)  # the broker listens before its clients' first attempt
            lab.nodes += [verifier.start(), edge.start()]
            yield lab
        finally:
            lab.destroy()


class App:
    """The app subprocess (``tests.reliability.netns_app``) in the broker's namespace."""

    def __init__(self, lab: NetLab, request: str, log_dir: Path) -> None:
        verifier, edge = lab.nodes[1], lab.nodes[2]
        assert isinstance(verifier, VerifierProcess) and isinstance(edge, EdgeProcess)
        self.verifier, self.edge = verifier, edge
        argv = [
            "ip", "netns", "exec", lab.namespaces["broker"],
            sys.executable, "-m", "tests.reliability.netns_app",
            "--broker", lab.broker_url, "--prefix", verifier.spec.prefix,
            "--device", edge.spec.device_id, "--verifier", verifier.spec.verifier_id,
            "--prompt", PROMPT, "--max-new-tokens", str(MAX_NEW), "--request", request,
            "--timeout-s", "60",
        ]  # fmt: skip
        env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(REPO_ROOT)}
        self.stderr = open(log_dir / f"netns-app-{request}.log", "wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env=env, cwd=REPO_ROOT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, object]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="netns-app-reader").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))
        self.lines.put({"eof": True})

    def next(self, timeout_s: float) -> dict[str, object]:
        try:
            msg = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"app silent for {timeout_s:g} s") from None
        if "error" in msg or "eof" in msg:
            raise AssertionError(f"app failed: {msg}")
        return msg

    def start(self) -> None:
        """Wait until the nodes are up (statuses + their ready log lines), then go."""
        assert self.next(180).get("ready") is True
        deadline = time.monotonic() + 60
        while not (
            self.verifier.has_event("verifier.ready") and self.edge.has_event("edge.serving")
        ):
            assert time.monotonic() < deadline, "nodes not ready"
            assert self.verifier.alive and self.edge.alive
            time.sleep(0.05)
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def record(self, timeout_s: float = 60) -> ResultChunk | ResultFinal:
        msg = self.next(timeout_s)
        rec = decode(bytes.fromhex(str(msg["record"])), expect=(ResultChunk, ResultFinal))
        assert isinstance(rec, ResultChunk | ResultFinal)
        return rec

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        self.proc.wait(timeout=10)
        self.stderr.close()


def read_stream(app: App, stream: Stream, on_chunk: object = None) -> Stream:
    while True:
        rec = app.record()
        if isinstance(rec, ResultFinal):
            stream.final = rec
            return stream
        stream.chunks.append(rec)
        assert rec.index == len(stream.chunks) - 1, "a chunk was lost or delivered twice"
        stream.text.apply(rec)
        if callable(on_chunk):
            on_chunk(stream)


def test_device_rides_through_a_5s_partition(
    lab: NetLab, greedy: GreedyReference, rel_logs: Path
) -> None:
    """The edge's link is cut for 5 s mid-generation; afterwards it finishes token-exact."""
    request = uuid.uuid4().hex[:12]
    app = App(lab, request, rel_logs)
    stream = Stream(device="pi-far", request=request)
    healed_at: list[float] = []

    def partition(s: Stream) -> None:
        if len(s.chunks) == 3:
            s.mark("partition")
            lab.link("edge", up=False)
            try:
                time.sleep(PARTITION_S)
            finally:
                lab.link("edge", up=True)
            healed_at.append(time.monotonic())

    try:
        app.start()
        read_stream(app, stream, partition)
    finally:
        lab.link("edge", up=True)
        app.close()
    assert_lossless(stream, greedy(PROMPT, MAX_NEW))
    assert 0 < stream.marks["partition"] < len(stream.chunks), "partition was not mid-generation"
    edge = lab.nodes[2]
    assert edge.alive and edge.events("edge.timeout"), "the device never noticed the partition"


def test_device_stays_exact_with_loss_and_delay(
    lab: NetLab, greedy: GreedyReference, rel_logs: Path
) -> None:
    """10 % loss and 50±20 ms delay on the edge's link (both directions) for a whole run."""
    why = lab.netem_error()
    if why is not None:
        pytest.skip(why)
    request = uuid.uuid4().hex[:12]
    app = App(lab, request, rel_logs)
    stream = Stream(device="pi-far", request=request)
    lab.netem("edge", "delay 50ms 20ms loss 10%")
    try:
        app.start()
        read_stream(app, stream)
    finally:
        lab.netem("edge", None)
        app.close()
    assert_lossless(stream, greedy(PROMPT, MAX_NEW))
