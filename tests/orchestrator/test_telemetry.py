"""Spans follow the GenAI conventions; metrics are exported in Prometheus's format."""

import pytest

from hetagent.orchestrator.telemetry import Telemetry, trace_id


def test_a_run_traces_as_workflow_agent_chat_and_tool_spans_in_one_trace():
    telemetry = Telemetry.in_memory()
    with (
        telemetry.workflow("quickstart", "run-1") as run,
        telemetry.agent("solve", "smollm2-135m", program="run-1"),
    ):
        with telemetry.chat("smollm2-135m", "cpu", "host-cpu", turn=1) as chat:
            chat.set_attribute("gen_ai.usage.input_tokens", 120)
        with telemetry.tool("python", "call-1", "cpu"):
            pass
    spans = {s.name: s for s in telemetry.finished_spans()}
    assert set(spans) == {
        "invoke_workflow quickstart",
        "invoke_agent solve",
        "chat smollm2-135m",
        "execute_tool python",
    }
    assert {s.context.trace_id for s in spans.values()} == {run.get_span_context().trace_id}
    chat = spans["chat smollm2-135m"]
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["hetagent.turn"] == 1 and chat.attributes["hetagent.pool"] == "cpu"
    assert chat.parent.span_id == spans["invoke_agent solve"].context.span_id
    assert spans["execute_tool python"].attributes["gen_ai.tool.call.id"] == "call-1"
    assert len(trace_id(run)) == 32


def test_a_failing_step_marks_its_span_with_the_error_type_and_the_error_goes_on():
    telemetry = Telemetry.in_memory()
    with pytest.raises(TimeoutError), telemetry.tool("shell", "call-2", None):
        raise TimeoutError("tool shell ran past its 5 s limit")
    (span,) = telemetry.finished_spans()
    assert span.attributes["error.type"] == "TimeoutError"
    assert not span.status.is_ok


def test_metrics_are_exported_with_their_labels():
    telemetry = Telemetry.in_memory()
    telemetry.steps.labels("tool.exec", "cpu", "succeeded").inc()
    telemetry.kv_decisions.labels("lease", "hold").inc(2)
    text = telemetry.metrics_text().decode()
    assert 'hetagent_steps_total{kind="tool.exec",pool="cpu",status="succeeded"} 1.0' in text
    assert 'hetagent_kv_lease_decisions_total{decision="hold",policy="lease"} 2.0' in text
