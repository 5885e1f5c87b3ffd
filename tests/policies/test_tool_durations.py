"""What retention policies learn: tool durations and turn statistics."""

import math

import pytest

from hetagent.policies.tool_durations import ToolDurations, TurnStats


def test_before_enough_samples_the_exponential_prior_answers():
    durations = ToolDurations(prior_mean=2.0)
    assert durations.cdf("bash", 2.0) == pytest.approx(1 - math.exp(-1))
    assert durations.mean("bash") == 2.0


def test_a_tool_with_enough_samples_is_predicted_from_its_own_durations():
    durations = ToolDurations(pooled_after=10, own_after=5)
    for i in range(10):  # bash takes 3 s every time, grep 0.1 s
        durations.turn_ended(f"p{i}", "bash" if i % 2 else "grep", now=100.0)
        durations.turn_arrived(f"p{i}", now=103.0 if i % 2 else 100.1)
    assert durations.cdf("bash", 2.9) == 0.0 and durations.cdf("bash", 3.0) == 1.0
    assert durations.cdf("grep", 0.2) == 1.0
    assert durations.cdf("unknown", 0.2) == pytest.approx(0.5)  # the pooled distribution
    assert durations.hazard("bash", age=2.0, window=1.5) == 1.0  # certain to return by 3 s
    assert durations.hazard("bash", age=0.5, window=1.0) == 0.0


def test_a_program_never_seen_leaving_records_nothing():
    durations = ToolDurations()
    assert durations.turn_arrived("stranger", now=5.0) is None


def test_eta_is_positive_and_programs_early_in_their_turns_have_more_to_go():
    turns = TurnStats()
    for n in (2, 4, 6, 8):
        turns.program_finished(n)
    assert 0 < turns.eta() <= 1
    assert turns.expected_remaining(1) > turns.expected_remaining(5)
