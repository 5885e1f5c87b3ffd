"""Traces and metrics of runs: OpenTelemetry spans per the GenAI semantic conventions, and
Prometheus metrics.

Spans (`gen_ai.operation.name` and span name as the conventions give them):
`invoke_workflow {agent}` for a run, `invoke_agent {node}` for a ReAct loop, `chat {model}` for
an LLM call, `execute_tool {tool}` for a tool call, `retrieval {index}` and `embeddings {model}`
for retrieval. hetagent's own facts ride along as `hetagent.*` attributes (pool, device, turn,
KV reused, lease decisions). Spans go to OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, to memory in tests, nowhere otherwise.

Metrics use vLLM's names where they mean the same (the embedded engine's server exports those);
the runtime's own are `hetagent_*`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

PROVIDER = "hetagent"  # gen_ai.provider.name: the embedded engine answers the calls
STEP_BUCKETS = (0.001, 0.005, 0.02, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Telemetry:
    """One tracer and one metrics registry, owned (not global) so tests and several runtimes
    in one process do not mix their spans."""

    def __init__(self, exporter: SpanExporter | None = None, service: str = "hetagent"):
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.memory: InMemorySpanExporter | None = None
        if exporter is None:
            exporter = _configured_exporter()
        if exporter is not None:
            processor = (
                SimpleSpanProcessor(exporter)
                if isinstance(exporter, InMemorySpanExporter)
                else BatchSpanProcessor(exporter)
            )
            self.provider.add_span_processor(processor)
            if isinstance(exporter, InMemorySpanExporter):
                self.memory = exporter
        self.tracer = self.provider.get_tracer("hetagent.orchestrator")
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "hetagent_runs",
            "Runs finished, by agent and status",
            ["agent", "status"],
            registry=self.registry,
        )
        self.steps = Counter(
            "hetagent_steps",
            "Steps finished, by kind, pool and status",
            ["kind", "pool", "status"],
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "hetagent_step_duration_seconds",
            "Step latency by kind and pool",
            ["kind", "pool"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "hetagent_llm_tokens",
            "Tokens of LLM calls by model, pool and type (input, output, cached)",
            ["model", "pool", "type"],
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "hetagent_tool_calls",
            "Tool calls by tool and outcome",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.kv_decisions = Counter(
            "hetagent_kv_lease_decisions",
            "KV retention decisions by policy and decision",
            ["policy", "decision"],
            registry=self.registry,
        )
        self.transfer_seconds = Histogram(
            "hetagent_kv_transfer_seconds",
            "KV moved between pools (prefill -> decode)",
            ["source", "target"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )

    @classmethod
    def in_memory(cls) -> Telemetry:
        """Spans kept in memory (`finished_spans()`), for tests."""
        return cls(exporter=InMemorySpanExporter())

    def finished_spans(self) -> tuple[ReadableSpan, ...]:
        if self.memory is None:
            raise RuntimeError("spans are kept only by Telemetry.in_memory()")
        return self.memory.get_finished_spans()

    def metrics_text(self) -> bytes:
        """The Prometheus exposition of the runtime's metrics."""
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown()

    # -- spans ------------------------------------------------------------------------------

    @contextmanager
    def span(
        self, operation: str, target: str, attributes: dict[str, Any], kind=SpanKind.INTERNAL
    ) -> Iterator[Span]:
        """A GenAI span named `{operation} {target}`; an exception marks it failed with its
        type as `error.type`, and goes on."""
        attributes = {"gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER} | {
            key: value for key, value in attributes.items() if value is not None
        }
        with self.tracer.start_as_current_span(
            f"{operation} {target}".strip(),
            kind=kind,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as error:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
                raise

    def workflow(self, agent: str, run_id: str) -> Any:
        return self.span(
            "invoke_workflow", agent, {"gen_ai.agent.name": agent, "hetagent.run.id": run_id}
        )

    def agent(self, node: str, model: str | None, program: str) -> Any:
        attributes = {
            "gen_ai.agent.name": node,
            "gen_ai.request.model": model,
            "gen_ai.conversation.id": program,
        }
        return self.span("invoke_agent", node, attributes)

    def chat(self, model: str, pool: str | None, device: str | None, **extra: Any) -> Any:
        attributes = {
            "gen_ai.request.model": model,
            "hetagent.pool": pool,
            "hetagent.device": device,
        } | {f"hetagent.{key}": value for key, value in extra.items()}
        return self.span("chat", model, attributes, kind=SpanKind.CLIENT)

    def tool(self, name: str, call_id: str, pool: str | None) -> Any:
        attributes = {"gen_ai.tool.name": name, "gen_ai.tool.call.id": call_id}
        return self.span("execute_tool", name, attributes | {"hetagent.pool": pool})

    def retrieval(self, index: str, pool: str | None) -> Any:
        return self.span(
            "retrieval", index, {"gen_ai.data_source.id": index, "hetagent.pool": pool}
        )

    def embeddings(self, model: str, pool: str | None) -> Any:
        return self.span(
            "embeddings", model, {"gen_ai.request.model": model, "hetagent.pool": pool}
        )


def trace_id(span: Span) -> str:
    """The 32-hex-digit trace id a user looks a run up by."""
    return format(span.get_span_context().trace_id, "032x")


def _configured_exporter() -> SpanExporter | None:
    """OTLP over HTTP when the standard environment variables ask for it."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # reads the endpoint, headers and timeout from the environment


__all__ = ["Telemetry", "trace_id"]
