"""Prometheus metrics. One registry per agent so tests can run several agents."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Event -> commit latency buckets (s), fine around the 250 ms target:
# `mdagent bench --workers` reads its quantiles from them (interpolated within one).
# fmt: off
LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 30,
)
# fmt: on


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, process_open_fds, process_max_fds, CPU...
        ProcessCollector(registry=r)
        self.frames_received = Counter(
            "mdagent_frames_received_total", "Stream frames received", ["source"], registry=r
        )
        self.stream_connects = Counter(
            "mdagent_stream_connects_total", "Successful stream connections", ["source"], registry=r
        )
        self.stream_rotations = Counter(
            "mdagent_stream_rotations_total",
            "Connections replaced make-before-break (age limit, serverShutdown)",
            ["source", "outcome"],
            registry=r,
        )
        self.stream_resubscribes = Counter(
            "mdagent_stream_resubscribes_total",
            "Silent streams subscribed again on their live connection (streams.py)",
            ["source"],
            registry=r,
        )
        self.stream_errors = Counter(
            "mdagent_stream_errors_total",
            "Stream connection failures by kind",
            ["source", "kind"],
            registry=r,
        )
        self.stream_connected = Gauge(
            "mdagent_stream_connected", "1 while the stream is connected", ["source"], registry=r
        )
        self.stream_last_frame = Gauge(
            "mdagent_stream_last_frame_timestamp_seconds",
            "Receive time of the last frame",
            ["source"],
            registry=r,
        )
        self.frames_refused = Counter(
            "mdagent_frames_refused_total",
            "frames the WebSocket layer refused (close 1007 invalid UTF-8, 1009 too big)",
            ["source", "code"],
            registry=r,
        )
        self.backpressure_stops = Counter(
            "mdagent_backpressure_stops_total",
            "Streams that stopped reading because the pipeline was full",
            ["source"],
            registry=r,
        )
        self.records = Counter(
            "mdagent_records_total",
            "Records produced by the normalizer",
            ["provider", "kind"],
            registry=r,
        )
        self.duplicates_dropped = Counter(
            "mdagent_duplicates_dropped_total",
            "Records at or below the committed offset, dropped before the writer",
            ["provider", "channel"],
            registry=r,
        )
        self.dead_letters = Counter(
            "mdagent_dead_letters_total", "Inputs stored in dead_letter", ["provider"], registry=r
        )
        self.gaps = Counter(
            "mdagent_gaps_total", "Gaps recorded as fetch_jobs", ["provider", "channel"], registry=r
        )
        self.rows_committed = Counter(
            "mdagent_rows_committed_total", "Rows committed by the writer", ["table"], registry=r
        )
        self.batches_committed = Counter(
            "mdagent_batches_committed_total", "Batches committed", ["path"], registry=r
        )
        self.write_errors = Counter(
            "mdagent_write_errors_total", "Failed batch writes (retried)", ["kind"], registry=r
        )
        self.batch_seconds = Histogram(
            "mdagent_batch_write_seconds",
            "Time to write and commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.commit_latency = Histogram(
            "mdagent_commit_latency_seconds",
            "Event time to commit time (sampled)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.backfill_jobs = Gauge(
            "mdagent_backfill_jobs", "Backfill jobs (fetch_jobs) by state", ["state"], registry=r
        )
        self.backfill_rows = Counter(
            "mdagent_backfill_rows_total",
            "Rows committed by backfill jobs (before dedup against stored rows)",
            ["provider", "channel"],
            registry=r,
        )
        self.backfill_requests = Counter(
            "mdagent_backfill_requests_total",
            "REST requests of the backfill by outcome (ok, 429, 418, 500, timeout, unreadable, ...)",
            ["provider", "outcome"],
            registry=r,
        )
        self.backfill_weight = Counter(
            "mdagent_backfill_weight_used_total",
            "Request weight spent by the backfill (Binance; 1 per request elsewhere)",
            ["provider"],
            registry=r,
        )
        self.backfill_rate_limited = Counter(
            "mdagent_backfill_rate_limited_total",
            "REST answers 429 (rate limited) and 418 (IP banned)",
            ["provider", "status"],
            registry=r,
        )
        self.backfill_jobs_finished = Counter(
            "mdagent_backfill_jobs_finished_total",
            "Backfill jobs ended by this process, by final state",
            ["provider", "channel", "state"],
            registry=r,
        )
        self.instruments_listed = Gauge(
            "mdagent_instruments_listed",
            "Instruments in the venue's last listing read",
            ["provider"],
            registry=r,
        )
        self.instrument_problems = Gauge(
            "mdagent_instrument_problems",
            "Configured symbols the venue does not list or lists as not trading",
            ["provider"],
            registry=r,
        )
        self.instruments_synced = Gauge(
            "mdagent_instruments_synced_timestamp_seconds",
            "Time of the last successful instruments sync",
            ["provider"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "mdagent_worker_restarts_total",
            "Worker processes ([agent] workers > 1) that died and were started again",
            ["worker"],
            registry=r,
        )
        self.embedded_restarts = Counter(
            "mdagent_embedded_restarts_total",
            "Times the embedded PostgreSQL was found dead and started again",
            registry=r,
        )
        self.db_up = Gauge("mdagent_database_up", "1 while the database accepts writes", registry=r)
        self.ready = Gauge("mdagent_ready", "1 while /readyz is OK", registry=r)


class RestMetrics:
    """The REST client's events as Prometheus counters (``backfill.rest.RestEvents``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def request(self, provider: str, outcome: str, weight: int) -> None:
        m = self._m
        m.backfill_requests.labels(provider, outcome).inc()
        m.backfill_weight.labels(provider).inc(weight)
        if outcome in ("429", "418"):
            m.backfill_rate_limited.labels(provider, outcome).inc()
