"""Chat from the app side: ``SledClient`` with ``messages`` and ``sled generate --chat``."""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from runtime.transport import MemoryBroker, MemoryTransport
from schemas import (
    ChatMessage,
    GenerateRequest,
    ResultFinal,
    SchemaError,
    Topics,
    decode,
    encode,
)
from sled import client_cli_generate as cli
from sled.client import SledClient

TOPICS = Topics("t/chat")


@asynccontextmanager
async def fake_device(
    broker: MemoryBroker, answers: list[str]
) -> AsyncIterator[list[GenerateRequest]]:
    """A device on ``pi-1`` answering each request with the next of ``answers``."""
    seen: list[GenerateRequest] = []
    async with MemoryTransport(broker) as bus:
        await bus.subscribe(TOPICS.req("pi-1"))

        async def serve() -> None:
            async for msg in bus.messages():
                req = decode(msg.payload, expect=GenerateRequest)
                seen.append(req)
                text = answers[len(seen) - 1]
                final = ResultFinal(request=req.request, finish_reason="stop", text=text)
                await bus.publish(TOPICS.out("pi-1", req.request), encode(final, "json"))

        task = asyncio.create_task(serve())
        try:
            yield seen
        finally:
            task.cancel()


async def test_stream_sends_messages_as_given() -> None:
    broker = MemoryBroker()
    async with fake_device(broker, ["Hello!"]) as seen, MemoryTransport(broker) as app:
        final = await SledClient(app, TOPICS).generate(
            "pi-1",
            messages=[ChatMessage("system", "Be brief."), {"role": "user", "content": "Hi"}],
            timeout_s=5,
        )
    assert final.text == "Hello!"
    assert seen[0].messages == [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    assert seen[0].prompt == ""


@pytest.mark.parametrize(
    ("prompt", "messages", "match"),
    [
        ("", None, "prompt: must not be empty"),
        ("hi", [{"role": "user", "content": "hi"}], "not both"),
        ("", [{"role": "robot", "content": "x"}], "role: 'robot' is not one of"),
        ("", [{"role": "user"}], "needs a role and a content"),
        ("", [], "messages: must not be empty"),
    ],
)
async def test_a_bad_request_is_refused_before_sending(
    prompt: str, messages: list[dict[str, str]] | None, match: str
) -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as app:
        with pytest.raises(SchemaError, match=match):
            await SledClient(app, TOPICS).generate("pi-1", prompt, messages=messages)
    assert broker.published == []


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["pi-1", *argv])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["In the beginning"], None),  # a plain prompt
        (["--chat", "Hi"], [ChatMessage("user", "Hi")]),
        (["Hi", "--chat"], [ChatMessage("user", "Hi")]),
        (["--chat"], []),  # interactive
        (["--system", "Be brief."], [ChatMessage("system", "Be brief.")]),  # interactive too
        (
            ["Hi", "--message", "system:Be brief.", "--message", "user:a:b"],
            [
                ChatMessage("system", "Be brief."),
                ChatMessage("user", "a:b"),
                ChatMessage("user", "Hi"),
            ],
        ),
        (["--message", "assistant:"], [ChatMessage("assistant", "")]),
    ],
)
def test_flags_make_the_conversation(argv: list[str], expected: list[ChatMessage] | None) -> None:
    assert cli.conversation(parse(*argv)) == expected


@pytest.mark.parametrize("bad", ["user", "robot:hi", ":hi"])
def test_a_bad_message_flag_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse("--message", bad)
    assert exit_.value.code == 2
    assert "expected ROLE:TEXT" in capsys.readouterr().err


async def test_interactive_chat_sends_the_whole_conversation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = MemoryBroker()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\nAnd MQTT?\n\nignored\n"))
    args = parse("--chat", "--system", "Be brief.", "--timeout", "5")
    history = cli.conversation(args)
    assert history is not None
    async with (
        fake_device(broker, ["Hello!", "A protocol."]) as seen,
        MemoryTransport(broker) as app,
    ):
        status = await cli._interactive(SledClient(app, TOPICS), args, history)
    assert status == 0 and len(seen) == 2  # the empty line ended it
    assert seen[1].messages == [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello!"),
        ChatMessage("user", "And MQTT?"),
    ]
    out = capsys.readouterr().out
    assert "you> assistant> " in out and "[pi-1/- stop" in out
