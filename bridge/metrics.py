"""Prometheus metrics served on the appservice listener at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "bridge_events_total", "Events handled, by network and direction", ["network", "direction"]
)
FAILURES = Counter(
    "bridge_failures_total",
    "Failures, by network, direction and stage (inbox, handle, deliver, ...)",
    ["network", "direction", "stage"],
)
QUEUE_DEPTH = Gauge("bridge_queue_depth", "Items waiting in the durable queues", ["queue"])
FAILED_DELIVERIES = Gauge(
    "bridge_failed_deliveries",
    "Deliveries that failed for good and wait for an admin (`!bridge failed`, `!bridge retry`)",
)
HANDLING_SECONDS = Histogram(
    "bridge_event_handling_seconds",
    "Time to handle one event (routing or delivery), by network and direction",
    ["network", "direction"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
END_TO_END_SECONDS = Histogram(
    "bridge_event_latency_seconds",
    "Time from receipt of an event until it was handled or delivered",
    ["network", "direction"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TRANSACTIONS = Counter(
    "bridge_appservice_transactions_total",
    "Appservice transactions from the homeserver, by outcome (stored, duplicate, refused; "
    "reused_id: an ID seen before that carried new events, handled and also counted as stored; "
    "needed_nothing: only events that need no relay, such as the puppets' own messages "
    "coming back, acknowledged without a write; gap: answered 503 once because the one before "
    "it never arrived, so that the homeserver sends the one it holds first)",
    ["outcome"],
)
EVENTS_NOT_OURS = Counter(
    "bridge_events_not_ours_total",
    "Events of rooms the bridge is not in (sent because of the alias namespace), "
    "acknowledged and not stored",
)
# Set on every scrape of /metrics from what /_bridge/health reports (contrib/prometheus
# alerts on them: a network down, the homeserver unreachable).
NETWORK_UP = Gauge(
    "bridge_network_up",
    "1 while a network is started and healthy, else 0 (why: /_bridge/health)", ["network"])
HOMESERVER_UP = Gauge(
    "bridge_homeserver_up", "1 while the homeserver answers the bridge, else 0")
BOUNCES = Counter(
    "bridge_bounces_total",
    "Deliveries to a person that failed for good on their side (a bounce report, a "
    "recipient the relay refused), by network",
    ["network"],
)
