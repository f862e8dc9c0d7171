"""Prometheus metrics of one server (its own registry, so several servers in a process don't mix).

GET /metrics returns them as Prometheus text. Gauges that mirror the engine (queue depth, free KV
slots, compilations) are read when scraped, so they are never stale.
"""

from collections.abc import Callable

import prometheus_client as prom

# Batches hold 1..serve.max_batch requests; latencies run from milliseconds (a prediction) to
# tens of seconds (a long generation on a CPU).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:

  def __init__(self):
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.requests = prom.Counter(
        "bigmodel_requests", "HTTP requests by path and status", ("path", "status"), registry=r
    )
    self.latency = prom.Histogram(
        "bigmodel_request_latency_seconds", "HTTP request latency", ("path",),
        buckets=LATENCY_BUCKETS, registry=r,
    )  # fmt: skip
    self.ttft = prom.Histogram(
        "bigmodel_time_to_first_token_seconds", "Submit to first generated token",
        buckets=LATENCY_BUCKETS, registry=r,
    )  # fmt: skip
    self.tokens = prom.Counter("bigmodel_generated_tokens", "Tokens generated", registry=r)
    self.batch = prom.Histogram(
        "bigmodel_batch_size", "Requests in each decode step or prediction batch",
        buckets=BATCH_BUCKETS, registry=r,
    )  # fmt: skip
    self.queue = prom.Gauge("bigmodel_queue_depth", "Requests waiting for a slot", registry=r)
    self.free_slots = prom.Gauge("bigmodel_free_kv_slots", "Free KV-cache slots", registry=r)
    self.compiles = prom.Gauge(
        "bigmodel_compilations", "Programs traced by the engine (fixed after warm-up)", registry=r
    )

  def watch(self, queue: Callable[[], int], free=None, compiles=None):
    """Reads the gauges from the service at scrape time; a service without KV slots (or
    without a compile count) leaves those gauges out."""
    self.queue.set_function(queue)
    for gauge, read in ((self.free_slots, free), (self.compiles, compiles)):
      if read is None:
        self.registry.unregister(gauge)
      else:
        gauge.set_function(read)

  def text(self) -> bytes:
    return prom.generate_latest(self.registry)


CONTENT_TYPE = prom.CONTENT_TYPE_LATEST
