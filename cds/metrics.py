"""Prometheus metrics of one app: requests, latency per service, cards per topic, feedback outcomes.

Each app owns its registry, so several apps in one process (the tests) never collide. With
`--workers N` every worker counts on its own and `/metrics` answers for the worker that serves the
scrape; scrape each worker, or run one worker per container (the compose file does).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

# Seconds; the spec asks for answers "on the order of 500 ms", so resolve well below and above it.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's counters and histograms, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cds_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cds_request_duration_seconds",
            "Time to answer a request, by route template and CDS service id (empty when none).",
            ["route", "service"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cards = Counter(
            "cds_cards_issued",
            "Cards returned to CDS clients, by service and card topic.",
            ["service", "topic"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "cds_feedback",
            "Feedback entries stored (new ones only), by service and outcome.",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.card_commits = Histogram(
            "cds_store_card_commit_calls",
            "Hook calls whose issued-card rows one store transaction wrote (group commit).",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.set_aside = Counter(
            "cds_store_set_aside",
            "Items the store refused for what they hold, moved to the dead_letter table, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.prefetch_fetches = Counter(
            "cds_prefetch_fetches",
            "Prefetch keys fetched from the client's FHIR server, by key and result (ok or the failure reason).",
            ["key", "result"],
            registry=self.registry,
        )

    def count_cards(self, service: str, topics: Iterable[str]) -> None:
        for topic in topics:
            self.cards.labels(service=service, topic=topic).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
