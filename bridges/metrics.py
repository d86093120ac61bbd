"""The Prometheus endpoint (``/metrics`` on the metrics port), fed from the gateway's stats.

A collector reads the same counters as the v2 statistics endpoint at scrape time, so the two
always agree. Families follow Triton's names, which dashboards already graph. Beside them,
per model and version: histograms ``inferoxy_request_duration_seconds`` (submit to answer),
``inferoxy_queue_duration_seconds`` and ``inferoxy_batch_size`` (rows per execution), fed by
``gateway.stats.Histogram`` (fixed buckets, integer increments on the hot path); and
``inferoxy_copies`` by state, ``inferoxy_shm_slots_in_use`` / ``inferoxy_shm_bytes_in_use``
(the gateway's input slab) and ``inferoxy_bridge_responses_total`` by bridge and status class
(REST, gRPC, WebSocket and ZeroMQ infer answers).
"""

from __future__ import annotations

from collections.abc import Iterator

import trio
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bridges.rest.app import hypercorn_config
from bridges.rest.asgi import Receive, Scope, Send, lifespan, send_json
from gateway.core import Gateway


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        success = CounterMetricFamily("nv_inference_request_success",
                                      "Successful inference requests", labels=labels)
        failure = CounterMetricFamily("nv_inference_request_failure",
                                      "Failed inference requests", labels=[*labels, "reason"])
        count = CounterMetricFamily("nv_inference_count", "Inferences performed (rows)",
                                    labels=labels)
        execs = CounterMetricFamily("nv_inference_exec_count", "Model executions (batches)",
                                    labels=labels)
        queue_us = CounterMetricFamily("nv_inference_queue_duration_us",
                                       "Cumulative queue time", labels=labels)
        compute_us = CounterMetricFamily("nv_inference_compute_infer_duration_us",
                                         "Cumulative model time", labels=labels)
        pending = GaugeMetricFamily("nv_inference_pending_request_count",
                                    "Requests queued or running", labels=labels)
        copies = GaugeMetricFamily("inferoxy_copies", "Model copies by state",
                                   labels=["model", "version", "state"])
        latency = HistogramMetricFamily(
            "inferoxy_request_duration_seconds",
            "Request latency, from submit to answer (success or failure)", labels=labels)
        queue_delay = HistogramMetricFamily(
            "inferoxy_queue_duration_seconds", "Time requests waited before dispatch",
            labels=labels)
        batch_size = HistogramMetricFamily(
            "inferoxy_batch_size", "Rows per model execution", labels=labels)
        for server in self.gateway.all_servers():  # one per (model, version)
            name, s, v = server.config.name, server.stats, server.config.version
            success.add_metric([name, v], s.success.count)
            for reason, n in s.failures_by_reason.items():
                failure.add_metric([name, v, reason], n)
            count.add_metric([name, v], s.inference_count)
            execs.add_metric([name, v], s.execution_count)
            queue_us.add_metric([name, v], s.queue.ns / 1000)
            compute_us.add_metric([name, v], s.compute_infer.ns / 1000)
            pending.add_metric([name, v], server.pending
                               + self.gateway.bridge_reports.pending_of(name, v))
            latency.add_metric([name, v], s.latency.cumulative(1e9), s.latency.sum / 1e9)
            queue_delay.add_metric([name, v], s.queue_delay.cumulative(1e9),
                                   s.queue_delay.sum / 1e9)
            batch_size.add_metric([name, v], s.batch_size.cumulative(), s.batch_size.sum)
            states: dict[str, int] = {}
            for c in server.copies:
                states[c.state.value] = states.get(c.state.value, 0) + 1
            for state, n in states.items():
                copies.add_metric([name, v, state], n)
        yield from (success, failure, count, execs, queue_us, compute_us, pending, copies,
                    latency, queue_delay, batch_size)
        slab, reports = self.gateway.slab, self.gateway.bridge_reports
        yield GaugeMetricFamily(
            "inferoxy_shm_slots_in_use", "Input slots in use (the gateway's slab and its "
            "bridge processes')", value=slab.slots_in_use + sum(reports.slots_in_use.values()))
        yield GaugeMetricFamily(
            "inferoxy_shm_bytes_in_use", "Bytes of input slabs in use (the gateway's and its "
            "bridge processes')", value=slab.bytes_in_use + sum(reports.bytes_in_use.values()))
        per_worker = CounterMetricFamily(
            "inferoxy_bridge_worker_responses", "Infer requests answered by each bridge process "
            "(--workers)", labels=["worker"])
        for index, n in sorted(reports.answers.items()):
            per_worker.add_metric([str(index)], n)
        yield per_worker
        answers = CounterMetricFamily(
            "inferoxy_bridge_responses", "Inference requests answered, by bridge and status class",
            labels=["bridge", "status_class"])
        for (bridge, status_class), n in list(self.gateway.bridge_answers.counts.items()):
            answers.add_metric([bridge, status_class], n)
        yield answers


async def serve_metrics(gateway: Gateway, host: str, port: int, shutdown: trio.Event, *,
                        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    registry = CollectorRegistry()
    registry.register(GatewayCollector(gateway))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["path"] != "/metrics":
            await send_json(send, 404, b'{"error": "not found; try /metrics"}')
            return
        await gateway.stats_fresh()  # what every process counted until now
        body = generate_latest(registry)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())]})
        await send({"type": "http.response.body", "body": body})

    await serve(app, hypercorn_config(host, port),  # type: ignore[arg-type]
                shutdown_trigger=shutdown.wait, task_status=task_status)
