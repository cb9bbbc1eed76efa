"""Broker passwords stay out of node logs and command lines (real processes, real broker).

The verifier logs in with ``SLED_PASSWORD`` (environment), device ``pi-1`` with
``--password-file``, device ``pi-2`` with the old ``mqtt://user:password@host`` URL
(its log must still show the URL without the password). Both devices serve a request;
then no node's log, at debug level, holds any of the passwords, and the command lines
of the first two hold none either.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from runtime.transport import MqttTransport
from tests.conftest import SecureBroker
from tests.reliability.app import GreedyReference, assert_lossless, stream_request
from tests.reliability.conftest import Models
from tests.reliability.procs import EdgeProcess, EdgeSpec, VerifierProcess, VerifierSpec, fleet

pytestmark = [pytest.mark.acl, pytest.mark.integration, pytest.mark.timeout(240)]

PROMPT = "In the beginning God created the heaven"
MAX_NEW = 16
DEBUG = ("--log-level", "debug")


def cmdline(pid: int | None) -> str:
    assert pid is not None
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def test_no_password_in_any_node_log_or_command_line(
    secure_broker: SecureBroker, rel_models: Models, rel_logs: Path, greedy: GreedyReference
) -> None:
    sb, t = secure_broker, secure_broker.topics
    password = {name: str(cred.password) for name, cred in sb.users.items()}
    url = sb.broker.url
    host_port = url.split("://", 1)[1]
    pw_file = rel_logs / f"pi-1-{uuid.uuid4().hex[:6]}.pw"
    pw_file.write_text(password["pi-1"] + "\n")
    pw_file.chmod(0o600)

    v_spec = VerifierSpec(rel_models.target, url, t.prefix, verifier_id="v1",
                          extra=("--username", "v1", *DEBUG))  # fmt: skip
    e1_login = ("--username", "pi-1", "--password-file", str(pw_file))
    e1_spec = EdgeSpec(rel_models.drafter, url, t.prefix, device_id="pi-1",
                       extra=(*e1_login, *DEBUG))  # fmt: skip
    url_with_password = f"mqtt://pi-2:{password['pi-2']}@{host_port}"
    e2_spec = EdgeSpec(rel_models.drafter, url_with_password, t.prefix, device_id="pi-2",
                       extra=DEBUG)  # fmt: skip
    app_cfg = sb.config("web")
    with fleet() as f:
        verifier = f.add(
            VerifierProcess(v_spec, rel_logs, env={"SLED_PASSWORD": password["v1"]}).start()
        )
        e1 = f.add(EdgeProcess(e1_spec, rel_logs).start())
        e2 = f.add(EdgeProcess(e2_spec, rel_logs).start())
        nodes = (verifier, e1, e2)
        await asyncio.gather(*(n.await_ready(app_cfg, t) for n in nodes))
        lines = {n.name: cmdline(n.pid) for n in (verifier, e1)}
        async with MqttTransport(app_cfg) as app:
            for device in ("pi-1", "pi-2"):
                stream = await stream_request(
                    app, t, device, PROMPT, max_new_tokens=MAX_NEW, request_id=uuid.uuid4().hex[:12]
                )
                assert_lossless(stream, greedy(PROMPT, MAX_NEW))  # they did log in and serve
    for name, line in lines.items():
        assert not any(pw in line for pw in password.values()), f"{name}: password in argv"
    for node in nodes:
        # what the node wrote (the harness's "### launch ARGV" lines are not the node's)
        text = "\n".join(
            line for line in node.log_text().splitlines() if not line.startswith("### launch ")
        )
        assert text.count("\n") > 10, node.describe()  # debug logs were written
        leaked = [user for user, pw in password.items() if pw in text]
        assert not leaked, f"{node.name}: the password of {leaked} is in {node.log_path}"
    started = e2.events("edge.started")
    assert started and started[-1]["broker"] == f"mqtt://pi-2:***@{host_port}"
