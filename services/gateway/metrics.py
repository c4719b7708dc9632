"""Prometheus metrics of one gateway app (own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "isco_gateway_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "isco_gateway_request_seconds",
            "request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "isco_gateway_inference_seconds",
            "time waiting for the inference service",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.records = Counter("isco_gateway_records", "records coded", ["endpoint"], registry=self.registry)
        self.model_version = Gauge(
            "isco_gateway_model_info",
            "model version last reported by inference (value 1)",
            ["version"],
            registry=self.registry,
        )
        self._version: str | None = None

    def saw_model_version(self, version: str) -> None:
        if version != self._version:
            if self._version is not None:
                self.model_version.remove(self._version)
            self.model_version.labels(version=version).set(1)
            self._version = version
