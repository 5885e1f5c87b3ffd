"""The HTTP API: tokens name tenants, a tenant sees only its own agents and runs, and every bad
input gets a 4xx naming what to fix."""

import json

import yaml


def post_agent(api, headers, text, tenant="alice"):
    return api.post(
        "/v1/agents", content=text, headers=headers(tenant) | {"Content-Type": "application/yaml"}
    )


def events_until_finished(api, headers, run_id, tenant="alice"):
    """Every event of the run, read from its SSE stream (which ends when the run finishes)."""
    events = []
    with api.stream("GET", f"/v1/runs/{run_id}/events", headers=headers(tenant)) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def submit(api, headers, agent="echo", inputs=None, tenant="alice"):
    response = api.post(
        "/v1/runs", json={"agent": agent, "inputs": inputs or {}}, headers=headers(tenant)
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_request_without_token_gets_401_with_bearer_challenge(api):
    for method, path in [("GET", "/v1/agents"), ("GET", "/v1/runs/x"), ("POST", "/v1/runs")]:
        response = api.request(method, path)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in response.json()["detail"]


def test_unknown_token_gets_401(api):
    response = api.get("/v1/agents", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert response.json()["detail"] == "unknown bearer token"


def test_health_needs_no_token(api):
    assert api.get("/healthz").json() == {"status": "ok"}


def test_agent_posted_as_yaml_is_listed_for_its_tenant_only(api, headers, echo_yaml):
    response = post_agent(api, headers, echo_yaml())
    assert response.status_code == 201, response.text
    assert response.json() == {"name": "echo", "nodes": ["fetch", "answer"]}
    assert api.get("/v1/agents", headers=headers("alice")).json() == {"agents": ["echo"]}
    assert api.get("/v1/agents", headers=headers("bob")).json() == {"agents": []}
    assert api.get("/v1/agents/echo", headers=headers("bob")).status_code == 404


def test_agent_posted_as_json_round_trips(api, headers, echo_yaml):
    document = yaml.safe_load(echo_yaml("json-agent"))
    assert api.post("/v1/agents", json=document, headers=headers()).status_code == 201
    stored = api.get("/v1/agents/json-agent", headers=headers()).json()
    assert stored["spec"]["nodes"][0]["name"] == "fetch"


def test_invalid_agent_gets_422_naming_each_path(api, headers, echo_yaml):
    text = echo_yaml().replace("maxTokens: 8", "maxTokens: -1").replace("tool: shell", "tol: x")
    response = post_agent(api, headers, text)
    assert response.status_code == 422
    paths = {error["path"] for error in response.json()["errors"]}
    assert "spec.nodes[1].maxTokens" in paths
    assert response.json()["detail"].startswith("spec.nodes[")


def test_bad_yaml_and_bad_json_and_wrong_kind_get_one_line_422s(api, headers):
    bad_yaml = post_agent(api, headers, "a: [unclosed")
    assert bad_yaml.status_code == 422 and "invalid YAML" in bad_yaml.json()["detail"]
    bad_json = api.post(
        "/v1/agents", content=b"{", headers=headers() | {"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 422 and "not JSON" in bad_json.json()["detail"]
    cluster = api.app.state.service.cluster.to_yaml()
    wrong = post_agent(api, headers, cluster)
    assert wrong.status_code == 422 and "expected AgentGraph" in wrong.json()["detail"]
    odd = api.post("/v1/agents", content=b"x", headers=headers() | {"Content-Type": "image/png"})
    assert odd.status_code == 415
    for response in (bad_yaml, bad_json, wrong, odd):
        assert "\n" not in response.json()["detail"]


def test_agent_reading_files_outside_the_base_directory_is_refused(api, headers, echo_yaml):
    text = echo_yaml().replace(
        "  slo:",
        "    embed: {id: minilm-l6, weights: {format: safetensors}}\n"
        "  indexes:\n    notes: {documents: ../../etc, embeddingModel: embed}\n  slo:",
    )
    response = post_agent(api, headers, text)
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "spec.indexes.notes.documents"


def test_run_completes_with_outputs_steps_pools_and_tokens(api, headers, echo_yaml):
    post_agent(api, headers, echo_yaml())
    run_id = submit(api, headers, inputs={"topic": "dogs"})
    events = events_until_finished(api, headers, run_id)
    assert events[0]["type"] == "run.created" and events[-1]["type"] == "run.succeeded"
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    run = api.get(f"/v1/runs/{run_id}", headers=headers()).json()
    assert run["status"] == "succeeded" and run["outputs"] == {"answer": "an answer"}
    assert run["inputs"] == {"topic": "dogs"}
    assert {step["pool"] for step in run["steps"]} == {"cpu"}
    assert run["tokens"] == {"input": 12, "output": 3, "cached": 4}
    assert run["slo_seconds"] == 600 and run["slo_met"] is True
    listed = api.get("/v1/runs", headers=headers()).json()["runs"]
    assert [r["id"] for r in listed] == [run_id]


def test_another_tenants_run_is_404_everywhere(api, headers, echo_yaml):
    post_agent(api, headers, echo_yaml())
    run_id = submit(api, headers)
    events_until_finished(api, headers, run_id)
    for method, path in [
        ("GET", f"/v1/runs/{run_id}"),
        ("GET", f"/v1/runs/{run_id}/events"),
        ("DELETE", f"/v1/runs/{run_id}"),
    ]:
        response = api.request(method, path, headers=headers("bob"))
        assert response.status_code == 404, (method, path)
        assert response.json()["detail"] == f"no run {run_id!r}"
    assert api.get("/v1/runs", headers=headers("bob")).json()["runs"] == []
    assert api.post("/v1/runs", json={"agent": "echo"}, headers=headers("bob")).status_code == 404


def test_bad_run_requests_get_4xx_naming_the_problem(api, headers, echo_yaml):
    post_agent(api, headers, echo_yaml())
    unknown_input = api.post(
        "/v1/runs", json={"agent": "echo", "inputs": {"colour": "red"}}, headers=headers()
    )
    assert unknown_input.status_code == 422
    assert "unknown input 'colour'" in unknown_input.json()["detail"]
    missing = api.post("/v1/runs", json={"inputs": {}}, headers=headers())
    assert missing.status_code == 422 and missing.json()["errors"][0]["path"] == "body.agent"
    extra = api.post("/v1/runs", json={"agent": "echo", "x": 1}, headers=headers())
    assert extra.status_code == 422
    bad_status = api.get("/v1/runs?status=lost", headers=headers())
    assert bad_status.status_code == 422 and "query.status" in bad_status.json()["detail"]


def test_cancel_stops_a_running_run_and_a_finished_one_answers_409(
    api, headers, echo_yaml, backend
):
    post_agent(api, headers, echo_yaml())
    backend.open.clear()  # the run's tool call waits
    run_id = submit(api, headers)
    with api.stream("GET", f"/v1/runs/{run_id}/events", headers=headers()) as stream:
        for line in stream.iter_lines():  # until the tool step is running
            if line.startswith("data: ") and json.loads(line[6:])["type"] == "step.running":
                break
    response = api.delete(f"/v1/runs/{run_id}", headers=headers())
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = api.delete(f"/v1/runs/{run_id}", headers=headers())
    assert again.status_code == 409 and "already finished" in again.json()["detail"]
    api.portal.call(backend.open.set)


def test_events_resume_after_the_last_event_id(api, headers, echo_yaml):
    post_agent(api, headers, echo_yaml())
    run_id = submit(api, headers)
    events = events_until_finished(api, headers, run_id)
    middle = events[len(events) // 2]["id"]
    rest = []
    with api.stream(
        "GET",
        f"/v1/runs/{run_id}/events",
        headers=headers() | {"Last-Event-ID": str(middle)},
    ) as stream:
        rest = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert [e["id"] for e in rest] == [e["id"] for e in events if e["id"] > middle]


def test_body_over_the_limit_gets_413_with_or_without_content_length(make_app, headers):
    from fastapi.testclient import TestClient

    with TestClient(make_app(max_body_bytes=1000)) as api:
        big = b"x" * 2000
        declared = api.post("/v1/agents", content=big, headers=headers())
        assert declared.status_code == 413 and "over 1000 bytes" in declared.json()["detail"]
        chunked = api.post("/v1/agents", content=iter([big[:600], big[600:]]), headers=headers())
        assert chunked.status_code == 413


def test_plan_shows_operators_by_pool_critical_path_baselines_and_graph(api, headers):
    quickstart = api.app.state.service.base_dir / "quickstart.yaml"
    from pathlib import Path

    text = (Path(__file__).parents[2] / "examples/agents/quickstart.yaml").read_text()
    docs = api.app.state.service.base_dir / "data/quickstart-docs"
    docs.mkdir(parents=True)
    quickstart.write_text(text)
    assert post_agent(api, headers, text).status_code == 201
    plan = api.get("/v1/plans/quickstart?cluster=mixed-generations", headers=headers()).json()
    pools = {a["pool"] for a in plan["assignments"]}
    assert pools <= {p["name"] for p in plan["cluster_pools"]} and len(pools) > 1
    assert plan["critical_path"][0] == "lookup.embed"
    assert plan["baselines"] and "usd_per_hour" in next(iter(plan["pools"].values()))
    ids = {n["id"] for n in plan["graph"]["nodes"]}
    edges = {tuple(e) for e in plan["graph"]["edges"]}
    assert ("solve.turn.prefill", "solve.turn.decode") in edges
    assert all(a in ids and b in ids for a, b in edges)
    # the tool's result reaches the next turn's prompt through the loop: a back edge
    assert any(b.startswith("solve.turn") for a, b in edges if a == "solve.observe.template")
    unknown = api.get("/v1/plans/quickstart?cluster=nowhere", headers=headers())
    assert unknown.status_code == 404 and "mixed-generations" in unknown.json()["detail"]
    assert api.get("/v1/plans/quickstart", headers=headers("bob")).status_code == 404


def test_metrics_count_finished_runs(api, headers, echo_yaml):
    assert api.get("/metrics").status_code == 401
    post_agent(api, headers, echo_yaml())
    events_until_finished(api, headers, submit(api, headers))
    text = api.get("/metrics", headers=headers()).text
    assert 'hetagent_runs_total{agent="echo",status="succeeded"} 1.0' in text


def test_cluster_view_and_stats_count_the_tenants_runs(api, headers, echo_yaml):
    post_agent(api, headers, echo_yaml())
    for _ in range(2):
        events_until_finished(api, headers, submit(api, headers))
    cluster = api.get("/v1/cluster", headers=headers()).json()
    assert cluster["cluster"] == "local" and cluster["runs"]["succeeded"] == 2
    assert cluster["queue_depth"] == 0 and cluster["pools"][0]["name"] == "cpu"
    stats = api.get("/v1/stats", headers=headers()).json()
    assert len(stats["runs"]) == 2 and stats["attainment"] == 1.0
    assert sum(b["runs"] for b in stats["per_minute"]) == 2
    assert api.get("/v1/stats", headers=headers("bob")).json()["runs"] == []


def test_dashboard_is_served_without_a_token(api):
    page = api.get("/dashboard/")
    assert page.status_code == 200 and "hetagent" in page.text
    assert api.get("/", follow_redirects=False).headers["location"] == "/dashboard/"


def test_tenant_event_stream_carries_only_that_tenants_runs(api, headers, echo_yaml):
    post_agent(api, headers, echo_yaml(), tenant="alice")
    post_agent(api, headers, echo_yaml(), tenant="bob")
    cursor = api.get("/v1/runs", headers=headers("alice")).json()["cursor"]
    bobs = submit(api, headers, tenant="bob")
    events_until_finished(api, headers, bobs, tenant="bob")
    alices = submit(api, headers, tenant="alice")
    events_until_finished(api, headers, alices, tenant="alice")
    seen = []
    with api.stream("GET", f"/v1/events?after={cursor}", headers=headers("alice")) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["type"] == "run.succeeded":
                    break
    assert {e["run_id"] for e in seen} == {alices}
