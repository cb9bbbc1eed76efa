"""How the demo shows progress: a live ANSI panel on a terminal, plain lines otherwise.

``LiveView`` (stdout is a TTY) redraws one block in place ~10 times a second: per
device a header with its drafter settings and counters (tokens/s, acceptance rate,
verified / unverified tokens, requests done) and the last lines of its text as it
streams (prompt in bold, unverified drafter text in yellow). No curses, no rich: cursor
movement and SGR codes only, and the scrollback above the block is left alone.

``LineView`` (a pipe, a file, CI) prints one line per event and one per finished
request, never any escape code.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Protocol, TextIO

from sled.demo.stats import DeviceStats, Output

BOLD, DIM, RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"
YELLOW, GREEN, RED = "\x1b[33m", "\x1b[32m", "\x1b[31m"
CLEAR_LINE, CLEAR_DOWN = "\x1b[K", "\x1b[J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
TEXT_LINES = 3  # lines of streamed text shown per device
REFRESH_S = 0.1  # live redraw period, seconds

Segment = tuple[str, str]  # (text, SGR style prefix or "")


class View(Protocol):
    """What the demo calls while it runs."""

    def event(self, line: str) -> None:
        """A one-off message (startup, shutdown)."""

    def request_done(self, stats: DeviceStats, output: Output) -> None:
        """A device finished a request."""

    def refresh(self) -> None:
        """Called every :data:`REFRESH_S` while requests run."""

    def close(self) -> None:
        """Leave the terminal as it was (cursor shown, block left in place)."""


def rate_text(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def one_line(text: str, limit: int = 100) -> str:
    """``text`` on one line (newlines as `` / ``), cut to ``limit`` characters."""
    flat = " / ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def wrap_segments(segments: list[Segment], width: int, max_lines: int) -> list[str]:
    """Hard-wrap styled text to ``width`` columns; the last ``max_lines`` lines, styled.

    Newlines in the text start a new line. Styles are re-opened on every line, so each
    returned line stands alone (ends with a reset when styled).
    """
    width = max(width, 10)
    lines: list[list[Segment]] = [[]]
    used = 0
    for text, style in segments:
        for i, piece in enumerate(text.split("\n")):
            if i > 0:
                lines.append([])
                used = 0
            while piece:
                room = width - used
                if room <= 0:
                    lines.append([])
                    used, room = 0, width
                part, piece = piece[:room], piece[room:]
                lines[-1].append((part, style))
                used += len(part)
    out = []
    for line in lines[-max_lines:]:
        rendered = "".join(f"{style}{text}{RESET}" if style else text for text, style in line)
        out.append(rendered)
    return out


def fit(segments: list[Segment], width: int) -> str:
    """Styled segments on one line, cut to ``width`` visible columns."""
    out, room = [], width
    for text, style in segments:
        part = text[: max(room, 0)]
        room -= len(part)
        if part:
            out.append(f"{style}{part}{RESET}" if style else part)
    return "".join(out)


class LineView:
    """Line-oriented output for pipes and logs."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def event(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def request_done(self, stats: DeviceStats, output: Output) -> None:
        f = output.final
        planned = f"/{stats.planned}" if stats.planned else ""
        extra = f", error: {f.error}" if f.error else ""
        rate = rate_text(f.acceptance_rate if f.drafted else None)
        self.event(
            f"[{stats.spec.device} {len(stats.outputs)}{planned}] {f.completion_tokens} tokens, "
            f"{f.tokens_per_s:.1f} tok/s, acceptance {rate}, "
            f"verified {f.verified_tokens}/{f.completion_tokens}, {f.finish_reason}{extra}: "
            f"{one_line(output.prompt, 40)!r} -> {one_line(f.text)!r}"
        )

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class LiveView:
    """The in-place terminal panel (see the module docstring)."""

    def __init__(
        self,
        devices: list[DeviceStats],
        title: str,
        out: TextIO | None = None,
        *,
        separator: str = "",  # between a prompt and its text ("\n" for a chat answer)
    ) -> None:
        self.devices = devices
        self.title = title
        self.separator = separator
        self.out = out or sys.stdout
        self.footer = "Ctrl-C to stop"
        self._drawn = 0  # lines of the block currently on screen
        self._last_draw_s = 0.0
        self._closed = False
        self.out.write(HIDE_CURSOR)
        self.out.flush()

    # -- View ---------------------------------------------------------------------------
    def event(self, line: str) -> None:
        """Print above the live block (the block is redrawn below it)."""
        self._erase()
        self.out.write(line + "\n")
        self._draw()

    def request_done(self, stats: DeviceStats, output: Output) -> None:
        self._draw()

    def refresh(self) -> None:
        self._draw()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._draw()
        self.out.write(SHOW_CURSOR)
        self.out.flush()

    # -- drawing ------------------------------------------------------------------------
    def _erase(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F{CLEAR_DOWN}")
            self._drawn = 0

    def _draw(self) -> None:
        width = max(shutil.get_terminal_size((100, 24)).columns - 1, 20)
        lines = self.render(width)
        buf = [f"\x1b[{self._drawn}F"] if self._drawn else []
        buf += [line + CLEAR_LINE + "\n" for line in lines]
        buf.append(CLEAR_DOWN)
        self.out.write("".join(buf))
        self.out.flush()
        self._drawn = len(lines)
        self._last_draw_s = time.monotonic()

    def render(self, width: int) -> list[str]:
        """The block as lines (each at most ``width`` visible columns)."""
        lines = [fit([(self.title, BOLD)], width)]
        for d in self.devices:
            lines.append("")
            lines.append(self._header(d, width))
            lines += self._text(d, width)
        lines += ["", fit([(self.footer, DIM)], width)]
        return lines

    def _header(self, d: DeviceStats, width: int) -> str:
        state: Segment = ("●", GREEN) if d.online else ("○", RED)
        planned = f"/{d.planned}" if d.planned else ""
        counters = (
            f"{d.tokens_per_s():5.1f} tok/s  accept {rate_text(d.acceptance_rate):>4}  "
            f"verified {d.verified_tokens:>4}  unverified {d.unverified_tokens:>3}  "
            f"done {len(d.outputs)}{planned}"
        )
        settings = f"   {d.spec.label}"  # last: cut first on a narrow terminal
        return fit([state, (" ", ""), (d.spec.device, BOLD), ("  " + counters, ""),
                    (settings, DIM)], width)  # fmt: skip

    def _text(self, d: DeviceStats, width: int) -> list[str]:
        indent = "  "
        if d.request:
            prompt = d.prompt
            chunks = d.current.chunks
            segments: list[Segment] = [(prompt, BOLD), (self.separator, "")]
            segments += [(c.text, "" if c.verified else YELLOW) for c in chunks]
        elif d.outputs:
            last = d.outputs[-1]
            segments = [(last.prompt, BOLD), (self.separator, ""), (last.final.text, "")]
        else:
            segments = [("waiting…", DIM)]
        wrapped = wrap_segments(segments, width - len(indent), TEXT_LINES)
        wrapped += [""] * (TEXT_LINES - len(wrapped))
        return [indent + line for line in wrapped]
