"""The server's Prometheus metrics (`GET /metrics`, text format, via prometheus_client): HTTP requests by endpoint
and status with their latency, prompt and completion tokens and time to first token per model, and each
engine's queue depth, running batch size and decode-step counters."""
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/moderations", "/health", "/metrics", "/")
LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60)


def endpoint(path):
    """A bounded label for a request path (unknown URLs share one)."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return "/web" if path.startswith("/web/") else "other"


class EngineStats:
    """Counters read from the engines' own stats at scrape time."""

    def __init__(self, served):
        self.served = served

    def collect(self):
        steps = CounterMetricFamily("nanogpt4_decode_steps", "batched decode steps", labels=["model"])
        rows = CounterMetricFamily("nanogpt4_decode_rows", "rows decoded, summed over steps (rows/steps = mean "
                                                           "batch size)", labels=["model"])
        for name, s in self.served.items():
            steps.add_metric([name], s.engine.stats["decode_steps"])
            rows.add_metric([name], s.engine.stats["decode_rows"])
        yield steps
        yield rows


class Metrics:
    def __init__(self, served):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("nanogpt4_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("nanogpt4_request_seconds", "time from request to the end of the response "
                                 "(the whole stream when streaming)", ["endpoint"], buckets=LATENCY, registry=r)
        self.tokens = Counter("nanogpt4_tokens", "tokens metered", ["model", "kind"], registry=r)
        self.ttft = Histogram("nanogpt4_time_to_first_token_seconds", "from submission to the engine to the first "
                              "sampled token", ["model"], buckets=LATENCY, registry=r)
        queue = Gauge("nanogpt4_queue_depth", "requests waiting for a free row", ["model"], registry=r)
        batch = Gauge("nanogpt4_batch_size", "rows in the running decode batch", ["model"], registry=r)
        for name, s in served.items():
            queue.labels(name).set_function(lambda s=s: len(s.engine.pending))
            batch.labels(name).set_function(lambda s=s: len(s.engine.rows))
        r.register(EngineStats(served))

    def generation(self, model, prompt_tokens, completion_tokens, ttft):
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)

    def text(self):
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Observe:
    """ASGI middleware: counts every HTTP request by endpoint and status and times it to its last byte."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, status = time.perf_counter(), [500]

        async def send_and_see(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            label = endpoint(scope["path"])
            self.metrics.requests.labels(label, str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - t)
