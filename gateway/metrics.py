"""``GET /metrics``: the live picture (:mod:`gateway.live`) in Prometheus text format.

Built with prometheus-client's custom-collector API: every scrape renders the state of that
moment (no counters kept twice, nothing to keep in sync). Metric names and example queries:
docs/metrics.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.live import LiveState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("starting", "running", "restarting", "failed", "stopped")
PREFIX = "pgw_"


class GatewayCollector(Collector):
    def __init__(self, live: LiveState) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        state = self.live.state()
        yield from _transport_metrics(state["transports"])
        yield from _device_metrics(state["devices"])
        yield from _group_metrics(state["groups"])


def _transport_metrics(transports: list[dict[str, Any]]) -> Iterator[Metric]:
    now = time.time()  # buffer_oldest_at is when a reading was read: wall time, like its age
    labels = ["transport", "kind"]
    up = GaugeMetricFamily(PREFIX + "transport_up", "1 when the transport's process is running",
                           labels=labels)
    st = GaugeMetricFamily(PREFIX + "transport_state", "1 for the transport's current state",
                           labels=[*labels, "state"])
    restarts = CounterMetricFamily(PREFIX + "transport_restarts",
                                   "restarts of the transport's process", labels=labels)
    env_in = CounterMetricFamily(PREFIX + "transport_envelopes_in",
                                 "envelopes the transport received (current process)",
                                 labels=labels)
    env_out = CounterMetricFamily(PREFIX + "transport_envelopes_out",
                                  "envelopes the transport sent (current process)", labels=labels)
    dropped = CounterMetricFamily(PREFIX + "transport_dropped",
                                  "envelopes dropped by or for the transport", labels=labels)
    errors = CounterMetricFamily(PREFIX + "transport_errors", "errors the transport counted",
                                 labels=labels)
    rows = GaugeMetricFamily(PREFIX + "buffer_rows",
                             "rows waiting in an output's store-and-forward buffer", labels=labels)
    oldest = GaugeMetricFamily(PREFIX + "buffer_oldest_age_seconds",
                               "age of the oldest row in an output's buffer", labels=labels)
    extra = GaugeMetricFamily(PREFIX + "transport_counter",
                              "every other numeric counter a transport reports",
                              labels=[*labels, "counter"])
    for t in transports:
        values = [t["name"], t["kind"]]
        up.add_metric(values, 1.0 if t["state"] == "running" else 0.0)
        for name in STATES:
            st.add_metric([*values, name], 1.0 if t["state"] == name else 0.0)
        restarts.add_metric(values, t.get("restarts", 0))
        env_in.add_metric(values, t.get("envelopes_in", 0))
        env_out.add_metric(values, t.get("envelopes_out", 0))
        dropped.add_metric(values, t.get("dropped", 0))
        errors.add_metric(values, t.get("errors", 0))
        counters = t.get("counters") or {}
        if "buffer_rows" in counters:
            rows.add_metric(values, float(counters["buffer_rows"]))
        oldest_at = counters.get("buffer_oldest_at")
        if isinstance(oldest_at, int | float) and "buffer_rows" in counters:
            age = max(0.0, now - oldest_at) if oldest_at and counters["buffer_rows"] else 0.0
            oldest.add_metric(values, age)
        for key, value in sorted(counters.items()):
            if key in ("buffer_rows", "buffer_oldest_at"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                extra.add_metric([*values, key], float(value))
    yield from (up, st, restarts, env_in, env_out, dropped, errors, rows, oldest, extra)


def _device_metrics(devices: list[dict[str, Any]]) -> Iterator[Metric]:
    age = GaugeMetricFamily(PREFIX + "device_last_reading_age_seconds",
                            "seconds since the device's last reading",
                            labels=["transport", "device"])
    available = GaugeMetricFamily(PREFIX + "device_available",
                                  "1 when the device answers", labels=["transport", "device"])
    for d in devices:
        age.add_metric([d["transport"], d["device"]], d["age"])
        available.add_metric([d["transport"], d["device"]], 1.0 if d["available"] else 0.0)
    yield from (age, available)


def _group_metrics(groups: list[dict[str, Any]]) -> Iterator[Metric]:
    breaker = GaugeMetricFamily(PREFIX + "loadsharing_breaker_amps",
                                "the group's breaker (loadsharing_group_max_current)",
                                labels=["section"])
    allocated = GaugeMetricFamily(PREFIX + "loadsharing_allocated_amps",
                                  "sum of the currents allocated to the group's chargers",
                                  labels=["section"])
    drawn = GaugeMetricFamily(PREFIX + "loadsharing_group_current_amps",
                              "amps the group's chargers draw, as its node reports them",
                              labels=["section"])
    limit = GaugeMetricFamily(PREFIX + "loadsharing_limit_amps",
                              "this node's own charger limit", labels=["section"])
    failsafe = GaugeMetricFamily(PREFIX + "loadsharing_failsafe",
                                 "1 while the node is in failsafe", labels=["section"])
    reachable = GaugeMetricFamily(PREFIX + "loadsharing_node_up",
                                  "1 when the node's status API answers", labels=["section"])
    alloc = GaugeMetricFamily(PREFIX + "loadsharing_allocation_amps",
                              "current allocated to each charger of the group",
                              labels=["section", "charger", "reason"])
    for g in groups:
        section = [g["section"]]
        breaker.add_metric(section, g["breaker"])
        reachable.add_metric(section, 1.0 if g["reachable"] else 0.0)
        if not g["reachable"]:
            continue
        allocated.add_metric(section, g["allocated"])
        if isinstance(g.get("drawn"), (int, float)):
            drawn.add_metric(section, float(g["drawn"]))
        if isinstance(g.get("limit"), (int, float)):
            limit.add_metric(section, float(g["limit"]))
        failsafe.add_metric(section, 1.0 if g.get("failsafe") else 0.0)
        for m in g["members"]:
            alloc.add_metric([g["section"], m["id"], m["reason"]], m["target_current"])
    yield from (breaker, allocated, drawn, limit, failsafe, reachable, alloc)


def render(live: LiveState) -> bytes:
    """One scrape: a registry holding only this gateway's collector (no process metrics of
    the default registry, which would describe the supervisor alone)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(live))
    return generate_latest(registry)
