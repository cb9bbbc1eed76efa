"""SLED mode: draft here, verify on the verifier (see :mod:`edge_node.policy`).

The loop carries out :class:`~edge_node.sled_steps.SledSteps`' decisions; the waits
run on the node's clock and sleep, so timeouts are tested without sleeping. Drafter
work (prefill, decode steps, re-sync) runs in the node's worker thread.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from edge_node.drafter import Drafter, KVState, Logits
from edge_node.modes.base import Incoming, Node, next_message
from edge_node.policy import Commit, DraftToken, Event, SledSession
from edge_node.results import Result, ResultStream
from edge_node.sampling import next_distribution, sample
from edge_node.sled_steps import Draft, Release, Send, SledSteps, Verified, WaitUntil
from schemas import GenerateRequest, encode


async def run(
    node: Node, stream: ResultStream, req: GenerateRequest, prompt_ids: list[int]
) -> AsyncIterator[Result]:
    await node.check_verifier()
    drafter = node.drafter
    session_id = uuid.uuid4().hex[:12]
    log = node.log.bind(request=req.request, session=session_id)
    state = drafter.new_state()
    logits = await node.compute(drafter.feed, state, prompt_ids)
    sess = SledSession(
        session=session_id,
        prompt=prompt_ids,
        max_new_tokens=req.max_new_tokens,
        params=req.params,
        eos_ids=drafter.eos_ids,
        config=node.policy,
        rtt=node.rtt,
        fingerprint=drafter.fingerprint,
    )
    steps = SledSteps(sess)
    rng = np.random.default_rng(req.params.seed)
    draft_topic = node.topics.draft(node.device)
    with node.inbox(session_id) as inbox:
        while True:
            step = steps.next_step(node.clock(), stream.wall_ns())
            if isinstance(step, Draft):
                logits, num_drafted = await node.compute(
                    draft, drafter, sess, state, logits, rng, step.max_tokens
                )
                steps.drafted(num_drafted)
            elif isinstance(step, Send):
                request = step.request
                log.debug("edge.draft_sent", seq=request.seq, start=request.start,
                          drafts=len(request.draft), context=request.context is not None,
                          attempt=sess.outstanding.attempts if sess.outstanding else 0)  # fmt: skip
                node.publish_soon(draft_topic, encode(request), f"draft-{session_id}-{request.seq}")
            elif isinstance(step, WaitUntil):
                msg = await next_message(node, inbox, step.deadline_s)
                _log_outcome(log, sess, msg, steps.received(msg, node.clock()))
            elif isinstance(step, Release):
                yield stream.chunk(step.tokens, verified=False)
            elif isinstance(step, Verified):
                stream.count(drafted=sess.drafted, accepted=sess.accepted, rounds=sess.rounds)
                logits = await node.compute(drafter.sync, state, sess.sequence)
                commit = step.commit
                yield stream.chunk(commit.tokens, verified=True, retract=commit.retract)
            else:
                stream.count(drafted=sess.drafted, accepted=sess.accepted, rounds=sess.rounds)
                yield stream.final(step.reason, error=step.error)
                return


def _log_outcome(
    log: Any, sess: SledSession, msg: Incoming | None, outcome: Commit | Event | None
) -> None:
    """Log what a timer expiry (``msg`` None) or a verdict did to the session."""
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
) -> tuple[Logits, int]:
    """Draft while the policy wants, at most ``max_tokens``: (next logits, number drafted).

    Runs in the worker thread. Sampling drafts carry their truncated distribution q.
    """
    p = sess.params
    num_drafted = 0
    while max_tokens is None or num_drafted < max_tokens:
        dist = next_distribution(logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
        if not sess.should_draft(dist.confidence):
            break
        tok = sample(dist, rng)
        if p.greedy:
            sess.add_draft(DraftToken(tok))
        else:
            q_ids, q_probs = dist.as_wire()
            sess.add_draft(DraftToken(tok, q_ids, q_probs))
        logits = drafter.feed(state, [tok])
        num_drafted += 1
    return logits, num_drafted
