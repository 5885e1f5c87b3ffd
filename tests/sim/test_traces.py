"""Trace format round trip, validation errors, and the generators' fitted statistics."""

import itertools
import json

import pytest

from hetagent.backends.sim import traces
from hetagent.backends.sim.traces import TraceError


def test_generated_trace_round_trips_through_jsonl(tmp_path):
    t = traces.generate("deep-research", 5, rate=0.2, seed=1, model="llama-3.1-8b")
    path = tmp_path / "t.jsonl"
    traces.dump(t, path)
    back = traces.load(path)
    assert back.programs == t.programs
    assert back.header["kind"] == "deep-research"
    assert any(turn.fanout for p in back.programs for turn in p.turns)


def test_same_seed_same_trace_other_seed_differs():
    a = traces.generate("swe", 20, rate=1.0, seed=4)
    assert a == traces.generate("swe", 20, rate=1.0, seed=4)
    assert a.programs != traces.generate("swe", 20, rate=1.0, seed=5).programs


@pytest.mark.parametrize(
    ("kind", "lo", "hi"), [("swe", 9.0, 12.5), ("bfcl", 5.3, 7.3), ("claude-code", 19.0, 29.0)]
)
def test_turn_counts_match_published_means(kind, lo, hi):
    s = traces.summary(traces.generate(kind, 3000, rate=1.0, seed=0))
    assert lo <= s["turns_mean"] <= hi


def test_claude_code_tool_durations_have_the_published_heavy_tail():
    s = traces.summary(traces.generate("claude-code", 3000, rate=1.0, seed=0))
    assert s["tool_p50_s"] < 0.2  # published p50 0.06 s
    assert 0.7 <= s["tool_under_1s"] <= 0.9  # published 76%
    assert 60 <= s["tool_p99_s"] <= 250  # published p99 120 s


def test_tail_scale_stretches_only_the_heavy_tail():
    base = traces.summary(traces.generate("swe", 2000, rate=1.0, seed=2))
    doubled = traces.summary(traces.generate("swe", 2000, rate=1.0, seed=2, tail_scale=2.0))
    assert doubled["tool_p50_s"] == pytest.approx(base["tool_p50_s"])
    assert doubled["tool_p99_s"] > 1.5 * base["tool_p99_s"]


def test_bursty_arrivals_are_more_variable_than_poisson():
    def cv(arrival):
        t = traces.generate("bfcl", 3000, rate=2.0, seed=1, arrival=arrival)
        times = [p.arrival for p in t.programs]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        mean = sum(gaps) / len(gaps)
        return (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean

    assert cv("poisson") == pytest.approx(1.0, abs=0.15)
    assert cv("bursty") > 1.6


def test_program_contexts_stay_within_the_model_context():
    for p in traces.generate("claude-code", 300, rate=1.0, seed=3).programs:
        assert sum(t.input + t.output for t in p.turns) <= traces.MAX_CONTEXT + 4096


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "t:1: not JSON"),
        ('{"id": "a", "arrival": 0, "turns": []}', "t:1.turns: expected a non-empty list"),
        ('{"id": "a", "arrival": -1, "turns": [{"input": 1, "output": 1}]}', "t:1.arrival"),
        ('{"id": "a", "arrival": 0, "turns": [{"input": 0, "output": 1}]}', r"turns\[0\].input"),
        ('{"id": "a", "arrival": 0, "turns": [{"input": 1, "output": 1, "x": 1}]}', "unknown"),
        ('{"id": "a", "arrival": 0, "turns": [{"input": 1, "output": 1, "tool": "t"}]}',
         "tool_seconds"),
    ],
)  # fmt: skip
def test_invalid_trace_lines_name_the_line_and_field(line, message):
    with pytest.raises(TraceError, match=message):
        traces.parse([line], "t")


def test_duplicate_program_ids_are_rejected():
    line = json.dumps({"id": "a", "arrival": 0, "turns": [{"input": 1, "output": 1}]})
    with pytest.raises(TraceError, match="duplicate program id 'a'"):
        traces.parse([line, line], "t")


def test_generator_options_are_checked():
    with pytest.raises(TraceError, match="exactly one of --rate and --concurrency"):
        traces.generate("swe", 3)
    with pytest.raises(TraceError, match="unknown trace kind"):
        traces.generate("chat", 3, rate=1.0)
