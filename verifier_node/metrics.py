"""Prometheus metrics of the verifier (one registry per service, so tests can run many).

Names (all prefixed ``sled_verifier_``)::

    batch_size                 histogram  requests per verification round
    queue_wait_seconds         histogram  arrival → start of the round, per request
    round_seconds              histogram  wall time of a verification round
    forward_seconds            histogram  the target forward inside the round
    draft_tokens_total         counter    draft tokens verified
    accepted_tokens_total      counter    of which accepted (acceptance = ratio of the two)
    accepted_length            histogram  accepted drafts per request
    generated_tokens_total     counter    centralized-mode tokens generated
    requests_total{outcome}    counter    verified, duplicate, stale, resync, error, …
    sessions{mode}             gauge      live sessions (sled, centralized)
    kv_cache_bytes             gauge      KV cache memory allocated
    kv_evictions_total         counter    sessions evicted from the KV cache
    kv_share_releases_total    counter    sessions released to keep a device in its KV share
    rows_retried_total         counter    rows run again one by one after a round raised
    estimator_mape{target}     gauge      verification-time estimator: mean |error| / actual
                                          over the last 100 served rounds (a fraction)
    estimator_error            histogram  the estimator's relative error per round
    estimated_round_seconds    histogram  estimated time of each batch formed (deadline)
    load                       gauge      busy fraction of the last second (Verdict.load)
    slo_requests_total{met}    counter    requests answered by their deadline (yes / no)
    slo_sessions_total{met}    counter    sessions finished within their TPOT objective
    batch_fired_total{reason}  counter    why a batch fired: full, all_waiting, deadline,
                                          max_wait (deadline scheduler)
    batch_admitted_total{phase}  counter  requests admitted: urgent (EDF) or value (fill)
    batch_deferred_total{why}  counter    requests left for a later batch: deadline (would
                                          push an admitted deadline past) or full
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from verifier_node.engine import RoundMetrics

_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class VerifierMetrics:
    """The verifier's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        p = "sled_verifier_"
        self.batch_size = Histogram(
            p + "batch_size",
            "requests per verification round",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds", "queue wait per request", buckets=_SECONDS, registry=r
        )
        self.round_seconds = Histogram(
            p + "round_seconds", "verification round wall time", buckets=_SECONDS, registry=r
        )
        self.forward_seconds = Histogram(
            p + "forward_seconds", "target forward time per round", buckets=_SECONDS, registry=r
        )
        self.draft_tokens = Counter(p + "draft_tokens", "draft tokens verified", registry=r)
        self.accepted_tokens = Counter(p + "accepted_tokens", "draft tokens accepted", registry=r)
        self.accepted_length = Histogram(
            p + "accepted_length",
            "accepted drafts per request",
            buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.generated_tokens = Counter(
            p + "generated_tokens", "centralized-mode tokens generated", registry=r
        )
        self.requests = Counter(
            p + "requests", "requests by outcome", labelnames=("outcome",), registry=r
        )
        self.sessions = Gauge(p + "sessions", "live sessions", labelnames=("mode",), registry=r)
        self.kv_bytes = Gauge(p + "kv_cache_bytes", "KV cache bytes allocated", registry=r)
        self.evictions = Counter(
            p + "kv_evictions", "sessions evicted from the KV cache", registry=r
        )
        self.kv_share_releases = Counter(
            p + "kv_share_releases",
            "sessions released to keep a device in its KV share",
            registry=r,
        )
        self.rows_retried = Counter(
            p + "rows_retried", "rows run again one by one after a round raised", registry=r
        )
        self.estimator_mape = Gauge(
            p + "estimator_mape",
            "verification-time estimator: mean absolute percentage error, recent rounds",
            labelnames=("target",),
            registry=r,
        )
        self.estimator_error = Histogram(
            p + "estimator_error",
            "verification-time estimator: relative error per round",
            buckets=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0),
            registry=r,
        )
        self.estimated_round = Histogram(
            p + "estimated_round_seconds",
            "estimated time of each batch formed",
            buckets=_SECONDS,
            registry=r,
        )
        self.load = Gauge(p + "load", "busy fraction of the last second", registry=r)
        self.slo_requests = Counter(
            p + "slo_requests", "requests by deadline met", labelnames=("met",), registry=r
        )
        self.slo_sessions = Counter(
            p + "slo_sessions", "sessions by TPOT objective met", labelnames=("met",), registry=r
        )
        self.batch_fired = Counter(
            p + "batch_fired", "why a batch fired", labelnames=("reason",), registry=r
        )
        self.batch_admitted = Counter(
            p + "batch_admitted", "requests admitted by phase", labelnames=("phase",), registry=r
        )
        self.batch_deferred = Counter(
            p + "batch_deferred",
            "requests deferred to a later batch",
            labelnames=("why",),
            registry=r,
        )
        self._server: Any = None

    def observe_round(self, m: RoundMetrics) -> None:
        self.batch_size.observe(m.batch_size)
        self.round_seconds.observe(m.round_ms / 1e3)
        self.forward_seconds.observe(m.forward.forward_ms / 1e3)
        self.draft_tokens.inc(m.num_draft_tokens)
        self.accepted_tokens.inc(m.num_accepted)
        self.kv_bytes.set(m.kv_bytes)
        if m.forward.evicted:
            self.evictions.inc(m.forward.evicted)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Start the HTTP endpoint (a daemon thread) on ``port``."""
        self._server, _ = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (for tests and logs); 0 when absent."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got
