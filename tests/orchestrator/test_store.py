"""The run store: what a resumed run can rely on."""

import time

import pytest

from hetagent.orchestrator.store import RunStore, StepRecord, StoreError


@pytest.fixture
def store(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    yield store
    store.close()


def started(run, key, kind="tool.exec"):
    return StepRecord(run, key, "running", time.time(), kind=kind, node=key.split(".")[0])


def finished(run, key, outputs):
    return StepRecord(run, key, "succeeded", time.time(), outputs=outputs)


def test_a_finished_step_is_kept_once_with_its_first_outputs(store):
    run = store.create_run("quickstart", {"steps": []}, {"question": "q"})
    key = "solve.tool.exec@1"
    store.record_steps([started(run, key), finished(run, key, {"stdout": "42"})])
    # a second writer of the same step (a resumed duplicate) changes nothing
    store.record_steps([started(run, key), finished(run, key, {"stdout": "43"})])
    assert store.finished_steps(run) == {key: {"stdout": "42"}}
    (step,) = store.steps(run)
    assert step.status == "succeeded" and step.attempt == 1


def test_a_restarted_step_counts_its_attempts_and_a_failed_one_is_not_finished(store):
    run = store.create_run("a", {}, {})
    failed = StepRecord(run, "s", "failed", time.time(), error="exit code 1")
    store.record_steps([started(run, "s"), failed])
    assert store.finished_steps(run) == {}
    store.record_steps([started(run, "s")])
    (step,) = store.steps(run)
    assert step.attempt == 2 and step.status == "running" and step.error is None


def test_changes_to_one_step_in_one_batch_fold_in_order(store):
    run = store.create_run("a", {}, {})
    failed = StepRecord(run, "s", "failed", time.time(), error="timeout")
    store.record_steps([started(run, "s"), failed, started(run, "s"), finished(run, "s", [1])])
    (step,) = store.steps(run)
    assert (step.status, step.attempt, step.outputs, step.error) == ("succeeded", 2, [1], None)
    types = [e.type for e in store.events(run)][1:]
    assert types == ["step.running", "step.failed", "step.running", "step.succeeded"]


def test_a_reopened_database_resumes_the_unfinished_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = RunStore(url)
    done, pending = first.create_run("a", {}, {}), first.create_run("a", {}, {})
    first.set_status(done, "succeeded", outputs={"answer": "yes"})
    first.record_steps([started(pending, "x", "data.template"), finished(pending, "x", "hello")])
    first.close()

    second = RunStore(url)
    claimed = second.claim_unfinished(owner="restarted")
    assert [r.id for r in claimed] == [pending] and claimed[0].owner == "restarted"
    assert second.finished_steps(pending) == {"x": "hello"}
    assert second.get_run(done).outputs == {"answer": "yes"}


def test_events_can_be_followed_from_the_last_one_seen(store):
    run = store.create_run("a", {}, {})
    store.set_status(run, "running")
    seen = store.events(run)
    assert [e.type for e in seen] == ["run.created", "run.running"]
    store.set_status(run, "succeeded", outputs={})
    assert [e.type for e in store.events(run, after=seen[-1].id)] == ["run.succeeded"]


def test_cancel_stops_an_unfinished_run_only(store):
    run = store.create_run("a", {}, {})
    assert store.cancel(run) and store.get_run(run).status == "cancelled"
    assert not store.cancel(run)


def test_outputs_that_json_cannot_hold_are_refused_naming_the_step(store):
    run = store.create_run("a", {}, {})
    with pytest.raises(ValueError, match="outputs of step s cannot be stored"):
        store.record_steps([started(run, "s"), finished(run, "s", {"value": object()})])
    assert store.steps(run) == []  # the batch is refused whole


def test_agents_are_kept_per_tenant(store):
    store.put_agent("acme", "qa", {"kind": "AgentGraph"})
    store.put_agent("acme", "qa", {"kind": "AgentGraph", "v": 2})
    assert store.get_agent("acme", "qa") == {"kind": "AgentGraph", "v": 2}
    assert store.get_agent("globex", "qa") is None
    assert store.list_agents("acme") == ["qa"]


def test_a_bad_database_url_is_a_clear_error():
    with pytest.raises(StoreError, match="use sqlite:///PATH or postgresql"):
        RunStore("nosuchdb://x")
    with pytest.raises(ValueError, match="unknown run status"):
        RunStore("sqlite:///:memory:").set_status("r", "done")
