"""Centralized mode: the verifier generates every token; GeneratedTokens stream back.

A silence of ``centralized_timeout_ms`` resends the request; ``fallback_after``
silences in a row end the generation with an error. Waits run on the node's clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from edge_node.modes.base import Node, next_message
from edge_node.results import Result, ResultStream
from schemas import CentralizedRequest, GeneratedTokens, GenerateRequest, VerifierStatus, encode


async def run(
    node: Node, stream: ResultStream, req: GenerateRequest, prompt_ids: list[int]
) -> AsyncIterator[Result]:
    async with node.link(req.request) as link:
        request = CentralizedRequest(
            session=link.session,
            prompt=prompt_ids,
            max_new_tokens=req.max_new_tokens,
            params=req.params,
            fingerprint=node.drafter.fingerprint,
            sent_at_ns=stream.wall_ns(),
        )
        payload = encode(request)
        timeout_s = node.config.centralized_timeout_ms / 1000
        silences = 0
        node.publish_soon(node.draft_topic(link.session), payload, f"central-{link.session}")
        while True:
            msg = await next_message(node, link.inbox, node.clock() + timeout_s)
            if isinstance(msg, VerifierStatus):  # moved, or its verifier is back: ask again
                node.publish_soon(
                    node.draft_topic(link.session), payload, f"central-{link.session}"
                )
                continue
            if msg is None:
                silences += 1
                link.log.warning("edge.centralized_timeout", silences=silences)
                if silences >= node.policy.fallback_after:
                    error = f"verifier sent nothing for {silences} x {timeout_s:g} s"
                    yield stream.final("error", error=error)
                    return
                node.publish_soon(
                    node.draft_topic(link.session), payload, f"central-{link.session}"
                )
                continue
            if not isinstance(msg, GeneratedTokens):
                continue
            silences = 0
            if msg.code is not None:
                yield stream.final("error", error=f"{msg.code}: {msg.message}")
                return
            have = len(stream.verified)
            if msg.start > have:
                link.log.warning("edge.centralized_gap", start=msg.start, have=have)
                continue
            fresh = msg.tokens[have - msg.start :]
            if fresh:
                yield stream.chunk(fresh, verified=True)
            if msg.done:
                last = stream.verified[-1] if stream.verified else None
                yield stream.final("stop" if last in node.drafter.eos_ids else "length")
                return
