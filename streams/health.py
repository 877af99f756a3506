"""A stage worker's health and metrics: GET /healthz, /readyz and /metrics on `health_port`.

/healthz is 200 while the worker's event loop answers. /readyz is 200 once its folded tables have
caught up and (for a stage with agents) its consumer holds partitions: a worker that is still
restoring state, or has nothing assigned, is not taking work. /metrics is Prometheus text: records
in and out per topic, lifecycle outcomes (rejections, suppressions, retries, dead letters...) by
status and reason, the time from the request to each of the stage's events, provider call latency
(deliver), the time a batch takes, and consumer lag per partition (read when scraped).

`health_port` 0 picks a free port and writes it to `<data_dir>/run/health-<stage>.port` (the local
supervisor runs six workers on one host); Kubernetes sets a fixed one for its probes.
"""

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from streams.settings import Settings

log = logging.getLogger(__name__)

RECORDS_IN = Counter("herald_stage_records_in_total", "Records a stage took from a topic", ["stage", "topic"])
RECORDS_OUT = Counter("herald_stage_records_out_total", "Records a stage produced to a topic", ["stage", "topic"])
BATCH_SECONDS = Histogram("herald_stage_batch_seconds", "Decode, handle, produce and acknowledge one batch",
                          ["stage"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
OUTCOMES = Counter("herald_stage_outcomes_total",
                   "Lifecycle events a stage emitted, by status and reason (error code); dead letters as "
                   "status dead_letter", ["stage", "status", "reason"])
SINCE_REQUEST = Histogram("herald_stage_since_request_seconds",
                          "From the request to a stage's lifecycle event about it", ["stage", "status"],
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600))
PROVIDER_SECONDS = Histogram("herald_provider_seconds", "One provider call (a send), by channel and result",
                             ["channel", "result"],
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LAG = Gauge("herald_stage_consumer_lag", "Messages behind the end of an assigned partition",
            ["stage", "topic", "partition"])

# Partition → messages behind, for the lag gauge; read at each scrape.
LagReader = Callable[[], Iterable[tuple[str, int, int]]]


def port_file(settings: Settings, stage: str) -> Path:
    return settings.data_dir / "run" / f"health-{stage}.port"


class HealthServer(Service):
    def __init__(self, settings: Settings, stage: str, ready: Callable[[], bool], lag: LagReader, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.stage = stage
        self.ready = ready
        self.lag = lag
        self.runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.health_host, self.settings.health_port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the port 0 became
        path = port_file(self.settings, self.stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(port))

    async def on_stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "stage": self.stage})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.ready()
        return web.json_response({"ready": ready, "stage": self.stage}, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        LAG.clear()
        for topic, partition, behind in self.lag():
            LAG.labels(self.stage, topic, str(partition)).set(behind)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
