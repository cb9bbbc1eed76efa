"""``sled soak``: many simulated devices against one real verifier process, for minutes.

    sled soak --devices 64 --minutes 10 --json soak.json

Starts a private Mosquitto and ``sled verifier`` (a subprocess) on ``--model-dir`` (by
default a tiny random model built on the spot), then runs ``--devices`` light asyncio
tasks that behave like edge nodes without a drafter: each replays the target's own
greedy continuation of a prompt as its drafts, with each draft token replaced by a
wrong one with probability ``--wrong``, pausing ``--draft-ms`` per token as a drafter
would, and loops over prompts (a new session each time) until the time is up.

Each device is the edge node's own drafting policy (``edge_node.policy.SledSession``)
with a scripted drafter: the policy builds every request (opening, follow-ups, the
context again after ``resync``), applies every verdict and times every request out.
Every verdict is checked against the continuation (accepted count, target token,
committed length, done): a difference counts in ``errors``. A request with no verdict
after ``--timeout-s`` is resent (same seq, as a device does); one still unanswered
after ``--resends`` resends, or at the end of the drain, is ``lost``. The verifier's
resident memory is sampled every second (it must stay flat: the KV cache is bounded by
``--kv-budget-mb``). The JSON report::

    {"sent", "verdicts", "lost", "rtt_p50_ms", "rtt_p99_ms", "rss_mb_max", "errors", ...}

Exit status 0 when nothing was lost and there were no errors.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.sim.router import Router, next_verdict, start_router, stop_task
from edge_node.policy import Commit, DraftToken, Event, PolicyConfig, RttEstimator, SledSession
from runtime.models import load_causal_lm
from runtime.stats import percentile
from runtime.threads import set_omp_wait
from schemas import Record, SamplingParams, Topics, encode


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """One soak run. Times are named with their unit."""

    devices: int = 8
    minutes: float = 1.0
    max_draft: int = 4  # draft tokens per request
    wrong: float = 0.2  # probability that a draft token is replaced by a wrong one
    draft_ms: float = 10.0  # simulated drafting time per draft token
    max_new_tokens: int = 48
    prompts: int = 32
    timeout_s: float = 10.0  # resend a request after this long without a verdict
    resends: int = 3  # then give the request up as lost
    drain_s: float = 30.0  # after the time is up, wait this long for outstanding verdicts
    seed: int = 0


@dataclass
class SoakStats:
    """Counters of the whole fleet."""

    sent: int = 0  # requests (not counting resends)
    verdicts: int = 0  # requests answered
    lost: int = 0
    resends: int = 0
    duplicates: int = 0  # verdicts for requests already answered (after resends)
    resyncs: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    sessions: int = 0
    tokens: int = 0  # committed completion tokens
    rtt_ms: list[float] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(message)


def soak_policy(cfg: SoakConfig) -> PolicyConfig:
    """The edge node's policy as a soak device runs it: ``max_draft`` tokens while the
    scripted drafter knows the continuation, a fixed ``timeout_s``, no fallback."""
    return PolicyConfig(
        threshold=0.5,  # the scripted drafter is sure (1.0) within the continuation, else 0
        max_draft=cfg.max_draft,
        async_drafting=False,
        timeout_floor_s=cfg.timeout_s,
        timeout_ceiling_s=cfg.timeout_s,
        fallback_after=cfg.resends + 2,  # a request is given up before that
    )


def draft_noisy(
    session: SledSession, truth: Sequence[int], rng: random.Random, wrong: float, vocab: int
) -> int:
    """Draft the continuation ``truth`` as the policy asks, each token replaced by a
    wrong one with probability ``wrong``; how many tokens were drafted."""
    drafted = 0
    while True:
        pos = session.generated + len(session.pending)
        if not session.should_draft(1.0 if pos < len(truth) else 0.0):
            return drafted
        tok = truth[pos]
        if rng.random() < wrong:
            tok = (tok + 1 + rng.randrange(vocab - 1)) % vocab
        session.add_draft(DraftToken(tok))
        drafted += 1


async def device_loop(
    name: str,
    router: Router,
    bus: Any,
    cases: Sequence[tuple[list[int], list[int]]],
    cfg: SoakConfig,
    stats: SoakStats,
    stop_at: float,
    vocab: int,
    topic_of: Callable[[str, str], str] | None = None,
) -> None:
    """Generate sessions until ``stop_at`` (monotonic seconds); see the module docstring.
    Each round goes to ``topic_of(device, session)`` (default: the device's draft topic)."""
    rng = random.Random(f"{cfg.seed}-{name}")
    inbox: asyncio.Queue[Record] = asyncio.Queue()
    router.queues[name] = inbox
    policy = soak_policy(cfg)
    while time.monotonic() < stop_at:
        prompt, truth = cases[rng.randrange(len(cases))]
        session = SledSession(
            session=uuid.uuid4().hex[:12],
            prompt=prompt,
            max_new_tokens=cfg.max_new_tokens,
            params=SamplingParams(),
            eos_ids=frozenset(),
            config=policy,
            rtt=RttEstimator(policy),
        )
        stats.sessions += 1
        while not session.done and session.generated < len(truth):
            k = draft_noisy(session, truth, rng, cfg.wrong, vocab)
            await asyncio.sleep(cfg.draft_ms * k / 1000)
            topic = topic_of(name, session.session) if topic_of else router.topics.draft(name)
            commit = await request(bus, topic, inbox, session, truth, cfg, stats)
            if commit is None:
                break  # abandon the session, as a device that gives up would
            stats.tokens += len(commit.tokens)


async def request(
    bus: Any,
    topic: str,
    inbox: asyncio.Queue[Record],
    session: SledSession,
    truth: Sequence[int],
    cfg: SoakConfig,
    stats: SoakStats,
) -> Commit | None:
    """One round of ``session``: send its request, resend it as the policy says (after
    a timeout, or with the context after ``resync``); the commit, or None when the
    request was lost or refused (counted)."""
    stats.sent += 1
    timeouts = 0
    while True:
        message = session.build_request(time.monotonic(), time.time_ns())
        await bus.publish(topic, encode(message), qos=1)
        answer = await _answer(inbox, session, truth, stats)
        if isinstance(answer, Commit):
            return answer
        if answer is None:  # timed out
            timeouts += 1
            if timeouts > cfg.resends:
                stats.lost += 1
                return None
            stats.resends += 1
            session.on_timeout()
        elif answer is Event.RESEND:  # resync: a new request with the context
            stats.resyncs += 1
            stats.sent += 1
        else:
            stats.error(f"{topic}/{session.session}/{session.seq}: {session.error}")
            return None


async def _answer(
    inbox: asyncio.Queue[Record], session: SledSession, truth: Sequence[int], stats: SoakStats
) -> Commit | Event | None:
    """The answer to the request in flight, applied by the policy; None on timeout.

    A verdict that differs from what a lossless verifier answers is an error."""
    deadline = time.monotonic() + session.timeout_s()
    while (verdict := await next_verdict(inbox, deadline)) is not None:
        o = session.outstanding
        if (
            verdict.ok
            and o is not None
            and (verdict.session, verdict.seq) == (session.session, o.seq)
        ):
            want = _expected(session, truth, o.num_drafts)
            got = (verdict.accepted, verdict.token, verdict.committed, verdict.done)
            if got != want:
                session.error = f"verdict {got} != expected {want}"
                stats.verdicts += 1
                return Event.ERROR
        outcome = session.on_verdict(verdict, time.monotonic())
        if outcome is Event.IGNORED:
            stats.duplicates += 1  # a late answer to an earlier resend
            continue
        if outcome is Event.BACKOFF:
            continue
        stats.verdicts += 1
        if isinstance(outcome, Commit) and outcome.rtt_s is not None:
            stats.rtt_ms.append(outcome.rtt_s * 1000)
        return outcome
    return None


def _expected(
    session: SledSession, truth: Sequence[int], num_drafts: int
) -> tuple[int, int, int, bool]:
    """(accepted, token, committed, done) of a lossless greedy verdict for the drafts sent."""
    generated = session.generated
    draft = session.pending_ids[:num_drafts]
    wrong_at = (i for i, tok in enumerate(draft) if tok != truth[generated + i])
    n = min(next(wrong_at, len(draft)) + 1, len(truth) - generated)
    return (
        n - 1,
        truth[generated + n - 1],
        len(session.committed_ids) + n,
        generated + n >= len(truth),
    )


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def references(
    model_dir: Path, n: int, max_new_tokens: int, seed: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """``n`` random prompts with the target's greedy continuations (stopping after EOS)."""
    import torch

    model: Any = load_causal_lm(model_dir, threads=1)
    vocab = int(model.config.vocab_size)
    rng = random.Random(seed)
    cases = []
    with torch.inference_mode():
        for _ in range(n):
            prompt = [rng.randrange(1, vocab) for _ in range(rng.randrange(4, 16))]
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.int64),
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
            cases.append((prompt, out[0, len(prompt) :].tolist()))
    return cases, vocab


async def soak(
    cfg: SoakConfig,
    mqtt: Any,
    topics: Topics,
    verifier_pid: int,
    cases: Sequence[tuple[list[int], list[int]]],
    vocab: int,
    progress: Any = None,
) -> dict[str, Any]:
    """Run the fleet against a verifier already serving ``topics``; the report."""
    from runtime.transport import MqttTransport

    stats = SoakStats()
    rss: list[tuple[float, float]] = []
    started = time.monotonic()
    stop_at = started + cfg.minutes * 60
    async with MqttTransport(mqtt.with_(client_id=f"soak-{uuid.uuid4().hex[:8]}")) as bus:
        router, routing = await start_router(bus, topics)
        router.on_bad = lambda topic, exc: stats.error(f"bad message on {topic}: {exc}")

        async def sample() -> None:
            while True:
                rss.append((time.monotonic() - started, rss_mb(verifier_pid)))
                if progress is not None and len(rss) % 30 == 0:
                    progress(stats, rss[-1])
                await asyncio.sleep(1.0)

        sampler = asyncio.create_task(sample(), name="soak-rss")
        fleet = [
            asyncio.create_task(
                device_loop(f"sim-{i}", router, bus, cases, cfg, stats, stop_at, vocab),
                name=f"sim-{i}",
            )
            for i in range(cfg.devices)
        ]
        hard_stop = cfg.minutes * 60 + cfg.drain_s + cfg.timeout_s * (cfg.resends + 1)
        done, pending = await asyncio.wait(fleet, timeout=hard_stop)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                stats.error(f"{task.get_name()} crashed: {task.exception()!r}")
        stats.lost += stats.sent - stats.verdicts - stats.lost  # cancelled mid-request
        sampler.cancel()
        await stop_task(routing)
    elapsed = time.monotonic() - started
    rss_values = [r for _, r in rss if r > 0]
    series = [(round(t), round(r, 1)) for t, r in rss[:: max(1, len(rss) // 40)]]
    return {
        "sent": stats.sent,
        "verdicts": stats.verdicts,
        "lost": stats.lost,
        "rtt_p50_ms": round(statistics.median(stats.rtt_ms), 2) if stats.rtt_ms else 0.0,
        "rtt_p99_ms": round(percentile(stats.rtt_ms, 99, empty=0.0), 2),
        "rss_mb_max": round(max(rss_values, default=0.0), 1),
        "errors": stats.errors,
        "devices": cfg.devices,
        "minutes": cfg.minutes,
        "elapsed_s": round(elapsed, 1),
        "sessions": stats.sessions,
        "tokens": stats.tokens,
        "tokens_per_s": round(stats.tokens / elapsed, 1) if elapsed else 0.0,
        "resends": stats.resends,
        "duplicate_verdicts": stats.duplicates,
        "resyncs": stats.resyncs,
        "rss_mb_first": round(rss_values[0], 1) if rss_values else 0.0,
        "rss_mb_last": round(rss_values[-1], 1) if rss_values else 0.0,
        "rss_mb_series": series,
        "error_samples": stats.error_samples,
        "config": dataclasses.asdict(cfg),
    }


# -- command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SoakConfig()
    parser.add_argument("--devices", type=int, default=d.devices, help="simulated devices")
    parser.add_argument("--minutes", type=float, default=d.minutes, help="how long to run")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="target model (default: a tiny random llama built now)")  # fmt: skip
    parser.add_argument("--max-draft", type=int, default=d.max_draft)
    parser.add_argument("--wrong", type=float, default=d.wrong,
                        help="probability that a draft token is wrong")  # fmt: skip
    parser.add_argument("--draft-ms", type=float, default=d.draft_ms,
                        help="simulated drafting time per token, ms")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    parser.add_argument("--timeout-s", type=float, default=d.timeout_s)
    parser.add_argument("--max-batch", type=int, default=16, help="verifier max batch")
    parser.add_argument("--kv-budget-mb", type=float, default=16.0, help="verifier KV budget")
    parser.add_argument("--threads", type=int, default=1, help="verifier torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logs", type=Path, default=None, help="folder for the verifier log")


def run(args: argparse.Namespace) -> int:
    set_omp_wait()  # before torch loads (runtime.threads)
    from bench.sim.verifier_proc import VerifierProcess
    from runtime.mosquitto import Mosquitto
    from runtime.transport import MqttConfig

    flags = vars(args)  # the flags are named as SoakConfig's fields
    cfg = SoakConfig(
        **{f.name: flags[f.name] for f in dataclasses.fields(SoakConfig) if f.name in flags}
    )

    def say(text: str) -> None:
        print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def progress(stats: SoakStats, rss: tuple[float, float]) -> None:
        say(
            f"t={rss[0]:.0f}s sent={stats.sent} verdicts={stats.verdicts} lost={stats.lost} "
            f"errors={stats.errors} tokens={stats.tokens} verifier_rss={rss[1]:.0f}MiB"
        )

    with tempfile.TemporaryDirectory(prefix="sled-soak-") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from runtime.models import save_tiny_llama

            say("building a tiny random target model")
            model_dir = save_tiny_llama(Path(tmp) / "target", seed=2)
        say(f"greedy references for {cfg.prompts} prompts")
        cases, vocab = references(model_dir, cfg.prompts, cfg.max_new_tokens, cfg.seed)
        logs = args.logs or Path(tmp)
        topics = Topics(f"soak/{uuid.uuid4().hex[:8]}/sled/v1")
        with Mosquitto.start() as broker:
            mqtt = MqttConfig(host=broker.host, port=broker.port, op_timeout_s=30)
            extra = ("--kv-budget-mb", str(args.kv_budget_mb), "--max-wait-ms", "5",
                     "--log-level", "warning")  # fmt: skip
            say("starting the verifier")
            with VerifierProcess(
                model_dir, mqtt, topics, threads=args.threads,
                log_path=logs / "soak-verifier.log", max_batch=args.max_batch, extra_args=extra,
            ) as verifier:  # fmt: skip
                assert verifier.proc is not None
                say(f"{cfg.devices} devices for {cfg.minutes:g} min")
                report = asyncio.run(
                    soak(cfg, mqtt, topics, verifier.proc.pid, cases, vocab, progress)
                )
                report["verifier_alive"] = verifier.proc.poll() is None
                report["kv_budget_mb"] = args.kv_budget_mb
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    summary = {k: report[k] for k in ("sent", "verdicts", "lost", "rtt_p50_ms", "rtt_p99_ms",
                                      "rss_mb_max", "errors")}  # fmt: skip
    print(json.dumps(summary))
    return 0 if report["lost"] == 0 and report["errors"] == 0 else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    add_arguments(p)
    sys.exit(run(p.parse_args()))
