"""SLED mode: draft here, verify on the verifier (see :mod:`edge_node.policy`).

The loop carries out :class:`~edge_node.sled_steps.SledSteps`' decisions; the waits
run on the node's clock and sleep, so timeouts are tested without sleeping. Drafter
work (prefill, decode steps, re-sync) runs in the node's worker thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from edge_node.drafter import Drafter, KVState, Logits
from edge_node.modes.base import Clock, Incoming, Node, next_message
from edge_node.policy import Commit, DraftToken, Event, SledSession
from edge_node.results import Result, ResultStream
from edge_node.sampling import distribution_for, sample
from edge_node.sled_steps import Draft, Release, Send, SledSteps, Verified, WaitUntil
from schemas import DraftRequest, GenerateRequest, VerifierStatus, encode


async def run(
    node: Node, stream: ResultStream, req: GenerateRequest, prompt_ids: list[int]
) -> AsyncIterator[Result]:
    async with node.link(req.request) as link:
        drafter = node.drafter
        state = drafter.new_state()
        logits = await node.compute(drafter.feed, state, prompt_ids)
        sess = SledSession(
            link.session, prompt_ids, req.max_new_tokens, req.params,  # the request's
            eos_ids=drafter.eos_ids, fingerprint=drafter.fingerprint,  # the drafter's
            config=node.policy, rtt=node.rtt, controller=node.controller,  # the device's
            tpot_ms=req.tpot_ms or node.config.tpot_ms,
        )  # fmt: skip
        steps = SledSteps(sess)
        rng = np.random.default_rng(req.params.seed)
        draft_topic = node.topics.draft(node.device)
        while True:
            step = steps.next_step(node.clock(), stream.wall_ns())
            if isinstance(step, Draft):
                logits, num_drafted = await node.compute(
                    draft, drafter, sess, state, logits, rng, step.max_tokens, node.clock
                )
                steps.drafted(num_drafted)
            elif isinstance(step, Send):
                request = step.request
                _log_sent(link.log, sess, request)
                node.publish_soon(
                    draft_topic, encode(request), f"draft-{link.session}-{request.seq}"
                )
            elif isinstance(step, WaitUntil):
                msg = await next_message(node, link.inbox, step.deadline_s)
                _log_outcome(link.log, sess, msg, steps.received(msg, node.clock()))
            elif isinstance(step, Release):
                yield stream.chunk(step.tokens, verified=False)
            elif isinstance(step, Verified):
                stream.count(drafted=sess.drafted, accepted=sess.accepted, rounds=sess.rounds)
                logits = await node.compute(drafter.sync, state, sess.sequence)
                commit = step.commit
                yield stream.chunk(commit.tokens, verified=True, retract=commit.retract)
            else:
                stream.count(drafted=sess.drafted, accepted=sess.accepted, rounds=sess.rounds)
                node.drafts_wasted += sess.wasted
                if sess.controller is not None:
                    link.log.debug("edge.controller", wasted=sess.wasted,
                                   **sess.controller.snapshot())  # fmt: skip
                if step.expired:
                    node.verification_expired += 1
                    link.log.warning(
                        "edge.verification_expired",
                        unverified=len(stream.unverified),
                        deadline_s=node.policy.verify_deadline_s,
                        total=node.verification_expired,
                    )
                yield stream.final(step.reason, error=step.error, verification_expired=step.expired)
                return


def _log_sent(log: Any, sess: SledSession, request: DraftRequest) -> None:
    attempt = sess.outstanding.attempts if sess.outstanding else 0
    log.debug("edge.draft_sent", seq=request.seq, start=request.start, attempt=attempt,
              drafts=len(request.draft), context=request.context is not None)  # fmt: skip


def _log_outcome(
    log: Any, sess: SledSession, msg: Incoming | None, outcome: Commit | Event | None
) -> None:
    """Log what a timer expiry (``msg`` None) or a verdict did to the session."""
    if isinstance(msg, VerifierStatus):
        if outcome is Event.RESEND:
            log.info("edge.verifier_online_resend", verifier=msg.verifier, seq=sess.seq)
        return
    if msg is None and isinstance(outcome, Event):
        log.info("edge.timeout", seq=sess.seq, failures=sess.failures, action=outcome.value)
        if outcome is Event.FALLBACK:
            log.warning("edge.fallback", seq=sess.seq, failures=sess.failures)
    elif msg is None:
        return
    elif isinstance(outcome, Commit) and outcome.retract:
        log.info("edge.resync", retract=outcome.retract, seq=msg.seq)
    elif outcome is Event.RESEND:
        log.info("edge.resync_requested", seq=sess.seq)
    elif outcome is Event.BACKOFF:
        log.warning("edge.verifier_busy", code=msg.code, seq=msg.seq)


def draft(
    drafter: Drafter,
    sess: SledSession,
    state: KVState,
    logits: Logits,  # [vocab], next-token logits after sess.sequence
    rng: np.random.Generator,
    max_tokens: int | None,
    clock: Clock,
) -> tuple[Logits, int]:
    """Draft while the policy wants, at most ``max_tokens``: (next logits, number drafted).

    Runs in the worker thread. Sampling drafts carry their truncated distribution q. The
    adaptive controller learns each token's drafting time (warpers + decode step).
    """
    num_drafted = 0
    while max_tokens is None or num_drafted < max_tokens:
        began_s = clock()
        dist = distribution_for(logits, sess.params)
        if not sess.should_draft(dist.confidence, dist.entropy, dist.margin):
            break
        tok = sample(dist, rng)
        if sess.params.greedy:
            sess.add_draft(DraftToken(tok))
        else:
            q_ids, q_probs = dist.as_wire()
            sess.add_draft(DraftToken(tok, q_ids, q_probs))
        logits = drafter.feed(state, [tok])
        num_drafted += 1
        if sess.controller is not None:
            sess.controller.observe_draft(clock() - began_s)
    return logits, num_drafted
