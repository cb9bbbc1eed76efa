"""The demo's terminal output: wrapping, the live block, line mode without escape codes."""

from __future__ import annotations

import io
import re

from schemas import ResultChunk, ResultFinal
from sled.demo.stats import DeviceSpec, DeviceStats
from sled.demo.view import RESET, YELLOW, LineView, LiveView, one_line, wrap_segments

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def visible(line: str) -> str:
    return ANSI.sub("", line)


def test_wrap_hard_wraps_and_keeps_the_last_lines() -> None:
    lines = wrap_segments([("abcdefghij", ""), ("klmno", YELLOW)], width=10, max_lines=5)
    assert [visible(line) for line in lines] == ["abcdefghij", "klmno"]
    assert lines[1] == f"{YELLOW}klmno{RESET}"
    assert [visible(x) for x in wrap_segments([("a\nb\nc", "")], 10, 2)] == ["b", "c"]


def test_one_line_flattens_and_cuts() -> None:
    assert one_line("a\n\nb") == "a / b"
    assert one_line("x" * 20, 10) == "x" * 9 + "…"


def stats_with_text() -> DeviceStats:
    d = DeviceStats(DeviceSpec("edge-1", "drafter-1l-onnx", 0.4, 4), online=True, planned=2)
    d.start("r1", "In the beginning")
    d.apply(ResultChunk(request="r1", index=0, text=" God" * 40, tokens=[1] * 40, generated=40))
    d.apply(ResultChunk(request="r1", index=1, text=" maybe", tokens=[2], verified=False))
    return d


def test_live_block_fits_the_width() -> None:
    out = io.StringIO()
    view = LiveView([stats_with_text()], title="SLED demo", out=out)
    lines = view.render(60)
    assert all(len(visible(line)) <= 60 for line in lines)
    assert any("edge-1" in line and "tok/s" in line for line in lines)
    assert any(YELLOW in line for line in lines)  # unverified text marked
    view.refresh()
    view.event("hello")
    view.close()
    assert "hello\n" in out.getvalue()


def test_line_view_prints_no_escape_codes() -> None:
    out = io.StringIO()
    d = stats_with_text()
    d.apply(ResultFinal(request="r1", finish_reason="length", text="done", completion_tokens=41))
    view = LineView(out)
    view.event("starting")
    view.request_done(d, d.outputs[-1])
    view.refresh()
    text = out.getvalue()
    assert "[edge-1 1/2] 41 tokens" in text and "\x1b" not in text


def test_chat_answer_starts_on_its_own_line() -> None:
    d = DeviceStats(DeviceSpec("edge-1", "drafter-onnx-int8", 0.3, 3, name="smol-int8"))
    d.start("r1", "Why is the sky blue?")
    d.apply(ResultChunk(request="r1", index=0, text="Rayleigh", tokens=[1], generated=1))
    plain = [visible(x).strip() for x in LiveView([d], "t", io.StringIO()).render(80)]
    view = LiveView([d], "t", io.StringIO(), separator="\n")
    chat = [visible(x).strip() for x in view.render(80)]
    assert "Why is the sky blue?Rayleigh" in plain  # a continuation (the KJV models)
    assert "Why is the sky blue?" in chat and "Rayleigh" in chat  # an answer: own line
    assert "smol-int8 threshold 0.3 max_draft 3" in visible(view.render(200)[2])
