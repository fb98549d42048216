"""Prometheus metrics of a service instance.

One :class:`Metrics` object per app (its own registry, so several apps can live
in one test process) holds the instruments both services share: sessions,
refusals, errors by code, per-model queue depth, batch size, inference time and
stalls, each request's queue wait and compute time by model and priority, and the process's own figures (resident memory, CPU time, open files).
Services add their own instruments through :meth:`Metrics.histogram` and
friends. ``render()`` gives the text for ``GET /metrics``.
"""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)

LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
STEP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6,
                  0.8, 1.0, 1.5, 2.0, 3.0, 5.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=True)
        self.sessions_active = self.gauge("sessions_active", "Open streaming sessions")
        self.sessions_total = self.counter("sessions", "Streaming sessions accepted")
        self.refusals = self.counter("refusals", "Requests or sessions refused for load", ["reason"])
        self.errors = self.counter("errors", "Errors reported to clients, by code", ["code"])
        self.wyoming_connections = self.counter("wyoming_connections", "Wyoming TCP connections accepted")
        self.client_requests = self.counter(
            "client_requests", "Authenticated requests and sessions, by API-key name", ["client", "kind"])
        self.queue_depth = self.gauge("queue_depth", "Requests waiting in a model scheduler", ["model"])
        self.batch_size = self.histogram("batch_size", "Requests per model batch", ["model"], buckets=BATCH_BUCKETS)
        self.inference_seconds = self.histogram(
            "inference_seconds", "Wall time of one model batch", ["model"], buckets=LATENCY_BUCKETS_S
        )
        self.stalls = self.counter("model_stalls", "Model calls that passed the scheduler's call timeout", ["model"])
        self.queue_wait_seconds = self.histogram(
            "queue_wait_seconds", "From a request's submission to the start of its batch", ["model", "priority"],
            buckets=STEP_BUCKETS_S)
        self.compute_seconds = self.histogram(
            "compute_seconds", "Wall time of the batch a request ran in", ["model", "priority"], buckets=STEP_BUCKETS_S)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds

    def counter(self, name: str, doc: str, labels: list[str] | None = None) -> Counter:
        return Counter(name, doc, labels or [], namespace=self.namespace, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: list[str] | None = None) -> Gauge:
        return Gauge(name, doc, labels or [], namespace=self.namespace, registry=self.registry)

    def histogram(
        self, name: str, doc: str, labels: list[str] | None = None, buckets: tuple = LATENCY_BUCKETS_S
    ) -> Histogram:
        return Histogram(name, doc, labels or [], namespace=self.namespace, registry=self.registry, buckets=buckets)

    def render(self) -> bytes:
        return generate_latest(self.registry)
