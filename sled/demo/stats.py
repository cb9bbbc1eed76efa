"""What the demo knows about each device: its settings, live counters and finished outputs.

Pure bookkeeping (no I/O): the demo feeds each device's :class:`~schemas.ResultChunk`s and
:class:`~schemas.ResultFinal`s in, the views read the counters out, and
:func:`summary` turns everything into the ``--json`` document.

Terms: *tokens* are completion tokens (the prompt excluded); *verified* tokens came from
the verifier's verdicts, *unverified* ones from the drafter alone (fallback); the
*acceptance rate* is accepted / drafted draft tokens; *tokens/s* of a device is its
tokens over the time its requests were running (first request sent to last final).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from schemas import ResultChunk, ResultFinal
from sled.client import ResultText


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One demo edge node: its id and drafter settings."""

    device: str
    drafter: str  # folder name under the models dir, e.g. drafter-1l-onnx
    threshold: float  # dynamic drafting confidence threshold (0..1)
    max_draft: int  # draft tokens per verification round, at most
    name: str = ""  # short drafter name for the table (default: the folder, less -onnx)

    @property
    def short(self) -> str:
        return self.name or self.drafter.removesuffix("-onnx")

    @property
    def label(self) -> str:
        return f"{self.short} threshold {self.threshold:g} max_draft {self.max_draft}"


@dataclass
class Output:
    """One finished request of one device."""

    prompt: str
    final: ResultFinal
    reference: list[int] | None = None  # the target's own greedy completion, when checked

    @property
    def matches(self) -> bool | None:
        """Token-exact equal to the target's greedy output (None: not checked)."""
        if self.reference is None:
            return None
        return self.final.tokens == self.reference and self.final.finish_reason != "error"

    def to_json(self) -> dict[str, Any]:
        f = self.final
        return {
            "prompt": self.prompt,
            "text": f.text,
            "tokens": list(f.tokens),
            "finish_reason": f.finish_reason,
            "completion_tokens": f.completion_tokens,
            "verified_tokens": f.verified_tokens,
            "unverified_tokens": f.unverified_tokens,
            "drafted": f.drafted,
            "accepted": f.accepted,
            "rounds": f.rounds,
            "tokens_per_s": round(f.tokens_per_s, 2),
            "ttft_ms": round(f.ttft_ms, 1),
            "total_ms": round(f.total_ms, 1),
            "error": f.error,
            "reference_tokens": self.reference,
            "matches_target": self.matches,
        }


@dataclass
class DeviceStats:
    """Counters of one device over the whole demo, plus the request in progress."""

    spec: DeviceSpec
    online: bool = False
    outputs: list[Output] = field(default_factory=list)
    prompt: str = ""  # of the request in progress ("" when idle)
    request: str = ""
    current: ResultText = field(default_factory=ResultText)
    current_started_s: float | None = None  # monotonic
    first_sent_s: float | None = None  # monotonic, first request of the demo
    last_done_s: float | None = None  # monotonic, last final received
    planned: int = 0  # requests this device will run (0: until stopped)

    # -- feeding ------------------------------------------------------------------------
    def start(self, request: str, prompt: str, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        self.request, self.prompt = request, prompt
        self.current = ResultText()
        self.current_started_s = now_s
        if self.first_sent_s is None:
            self.first_sent_s = now_s

    def apply(self, result: ResultChunk | ResultFinal, now_s: float | None = None) -> bool:
        """Apply a result of the request in progress; True when it was the final."""
        if result.request != self.request:
            return False  # a stale request (e.g. resent after a lost request)
        self.current.apply(result)
        if isinstance(result, ResultFinal):
            self.outputs.append(Output(self.prompt, result))
            self.last_done_s = time.monotonic() if now_s is None else now_s
            self.request, self.current_started_s = "", None
            return True
        return False

    def abandon(self) -> None:
        """Forget the request in progress (the run ended before its final): not counted."""
        self.request, self.prompt, self.current_started_s = "", "", None
        self.current = ResultText()

    # -- counters -----------------------------------------------------------------------
    def _live_chunk(self) -> ResultChunk | None:
        return self.current.chunks[-1] if self.request and self.current.chunks else None

    @property
    def tokens(self) -> int:
        live = self._live_chunk()
        done = sum(o.final.completion_tokens for o in self.outputs)
        return done + (live.generated if live is not None else 0)

    @property
    def verified_tokens(self) -> int:
        live = len(self.current.tokens) - self.current.unverified_tokens if self.request else 0
        return sum(o.final.verified_tokens for o in self.outputs) + live

    @property
    def unverified_tokens(self) -> int:
        live = self.current.unverified_tokens if self.request else 0
        return sum(o.final.unverified_tokens for o in self.outputs) + live

    @property
    def drafted(self) -> int:
        live = self._live_chunk()
        return sum(o.final.drafted for o in self.outputs) + (live.drafted if live else 0)

    @property
    def accepted(self) -> int:
        live = self._live_chunk()
        return sum(o.final.accepted for o in self.outputs) + (live.accepted if live else 0)

    @property
    def rounds(self) -> int:
        return sum(o.final.rounds for o in self.outputs)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outputs if o.final.finish_reason == "error")

    def busy_s(self, now_s: float | None = None) -> float:
        """Seconds from the first request sent to the last final (or now, while running)."""
        if self.first_sent_s is None:
            return 0.0
        end = self.last_done_s if not self.request else None
        if end is None:
            end = time.monotonic() if now_s is None else now_s
        return max(end - self.first_sent_s, 0.0)

    def tokens_per_s(self, now_s: float | None = None) -> float:
        busy = self.busy_s(now_s)
        return self.tokens / busy if busy > 0 else 0.0

    @property
    def lossless(self) -> bool | None:
        """Every output matched the target (None: nothing checked)."""
        checked = [o.matches for o in self.outputs if o.matches is not None]
        if not checked:
            return None
        return all(checked) and len(checked) == len(self.outputs)

    def to_json(self) -> dict[str, Any]:
        rate = self.acceptance_rate
        return {
            "drafter": self.spec.drafter,
            "threshold": self.spec.threshold,
            "max_draft": self.spec.max_draft,
            "requests": len(self.outputs),
            "errors": self.errors,
            "tokens": self.tokens,
            "verified_tokens": self.verified_tokens,
            "unverified_tokens": self.unverified_tokens,
            "busy_s": round(self.busy_s(), 3),
            "tokens_per_s": round(self.tokens_per_s(), 2),
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": None if rate is None else round(rate, 4),
            "rounds": self.rounds,
            "tokens_per_round": round(self.tokens / self.rounds, 3) if self.rounds else None,
            "lossless": self.lossless,
            "outputs": [o.to_json() for o in self.outputs],
        }


def summary(
    devices: list[DeviceStats], *, wall_s: float, checked: bool, **extra: Any
) -> dict[str, Any]:
    """The ``--json`` document: per-device counters, totals, and the lossless verdict.

    ``lossless`` is True only when every output was checked against the target's own
    greedy output and matched token for token, and no text was unverified; None when
    the check was skipped.
    """
    outputs = [o for d in devices for o in d.outputs]
    tokens = sum(d.tokens for d in devices)
    lossless: bool | None = None
    if checked:
        lossless = bool(outputs) and all(o.matches for o in outputs)
        lossless = lossless and all(d.unverified_tokens == 0 for d in devices)
    drafted = sum(d.drafted for d in devices)
    accepted = sum(d.accepted for d in devices)
    return {
        **extra,
        "lossless": lossless,
        "outputs_checked": sum(1 for o in outputs if o.matches is not None),
        "outputs_matching": sum(1 for o in outputs if o.matches),
        "wall_s": round(wall_s, 3),
        "total": {
            "requests": len(outputs),
            "tokens": tokens,
            "verified_tokens": sum(d.verified_tokens for d in devices),
            "unverified_tokens": sum(d.unverified_tokens for d in devices),
            "wstgr_tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else 0.0,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
        },
        "devices": {d.spec.device: d.to_json() for d in devices},
    }


def table(devices: list[DeviceStats], *, lossless: bool | None, wall_s: float) -> str:
    """The closing summary table as plain text."""
    head = (
        f"{'device':<8} {'drafter':<11} {'thresh':>6} {'k':>3} {'reqs':>4} {'tokens':>6} "
        f"{'tok/s':>6} {'accept':>6} {'tok/rnd':>7} {'verif':>6} {'unverif':>7} {'target':>6}"
    )
    lines = [head, "-" * len(head)]
    for d in devices:
        rate = d.acceptance_rate
        per_round = f"{d.tokens / d.rounds:.2f}" if d.rounds else "-"
        match = {True: "same", False: "DIFF", None: "-"}[d.lossless]
        lines.append(
            f"{d.spec.device:<8} {d.spec.short:<11} "
            f"{d.spec.threshold:>6.2f} {d.spec.max_draft:>3} {len(d.outputs):>4} "
            f"{d.tokens:>6} {d.tokens_per_s():>6.1f} "
            f"{'-' if rate is None else f'{rate:.0%}':>6} {per_round:>7} "
            f"{d.verified_tokens:>6} {d.unverified_tokens:>7} {match:>6}"
        )
    tokens = sum(d.tokens for d in devices)
    wstgr = tokens / wall_s if wall_s > 0 else 0.0
    lines.append("-" * len(head))
    lines.append(
        f"total: {tokens} tokens in {wall_s:.1f} s, whole-system {wstgr:.1f} tok/s "
        "(tok/rnd: tokens per verification round; target: output vs the target's own "
        "greedy output)"
    )
    verdict = {
        True: "lossless: true (every output equals the target model's own greedy output)",
        False: "lossless: FALSE (some output differs from the target's greedy output)",
        None: "lossless: not checked",
    }[lossless]
    lines.append(verdict)
    return "\n".join(lines)
