"""The run store: what a resumed run can rely on."""

import pytest

from hetagent.orchestrator.store import RunStore, StoreError


@pytest.fixture
def store(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    yield store
    store.close()


def test_a_finished_step_is_kept_once_with_its_first_outputs(store):
    run = store.create_run("quickstart", {"steps": []}, {"question": "q"})
    store.start_step(run, "solve.tool.exec@1", kind="tool.exec", node="solve", pool="cpu")
    assert store.finish_step(run, "solve.tool.exec@1", {"stdout": "42"}) == {"stdout": "42"}
    # a second writer of the same step (a resumed duplicate) gets the first result back
    assert store.finish_step(run, "solve.tool.exec@1", {"stdout": "43"}) == {"stdout": "42"}
    assert store.finished_steps(run) == {"solve.tool.exec@1": {"stdout": "42"}}
    with pytest.raises(ValueError, match="already finished"):
        store.start_step(run, "solve.tool.exec@1", kind="tool.exec", node="solve", pool="cpu")


def test_a_restarted_step_counts_its_attempts_and_a_failed_one_is_not_finished(store):
    run = store.create_run("a", {}, {})
    assert store.start_step(run, "s", kind="tool.exec", node="s", pool=None) == 1
    store.fail_step(run, "s", "exit code 1")
    assert store.finished_steps(run) == {}
    assert store.start_step(run, "s", kind="tool.exec", node="s", pool=None) == 2


def test_a_reopened_database_resumes_the_unfinished_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = RunStore(url)
    done, pending = first.create_run("a", {}, {}), first.create_run("a", {}, {})
    first.set_status(done, "succeeded", outputs={"answer": "yes"})
    first.start_step(pending, "x", kind="data.template", node="x", pool="cpu")
    first.finish_step(pending, "x", "hello")
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
    store.start_step(run, "s", kind="data.template", node="s", pool=None)
    with pytest.raises(ValueError, match="outputs of step s cannot be stored"):
        store.finish_step(run, "s", {"value": object()})


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
