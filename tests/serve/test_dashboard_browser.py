"""The dashboard in a real browser (Debian's chromium, driven by Playwright): a run submitted
through the SDK appears live on the runs page, completes there, and its detail page shows its
steps by pool. Screenshots land in the test's tmp directory."""

from pathlib import Path

import pytest

from hetagent.client import Client

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)
AGENT = """\
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: browser-demo}
spec:
  inputs:
    gate: {type: string}
  slo: {p95LatencySeconds: 120}
  nodes:
    - {name: prepare, type: tool, tool: shell, args: {command: "echo ready"}}
    - name: wait
      type: tool
      tool: shell
      args: {command: "while [ ! -e ${inputs.gate} ]; do sleep 0.05; done; echo finished"}
      dependsOn: [prepare]
      timeoutSeconds: 120
  outputs:
    result: ${nodes.wait.outputs.text}
"""


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),  # never Playwright's own download
            headless=True,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
            ],
        )  # fmt: skip
        yield browser
        browser.close()


def test_run_submitted_through_the_sdk_shows_up_live_and_completes_on_the_page(
    tmp_path, serve, browser
):
    (tmp_path / "browser-demo.yaml").write_text(AGENT)
    gate = tmp_path / "gate"
    server = serve().start()
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/dashboard/#token={server.TOKEN}")
    page.wait_for_selector("#runs")
    page.wait_for_selector("#live.on")  # subscribed to the tenant's event stream

    with Client(server.url, token=server.TOKEN) as client:
        run_id = client.submit_sync(str(tmp_path / "browser-demo.yaml"), {"gate": str(gate)})
        row = f'tr[data-run="{run_id}"]'
        page.wait_for_selector(f'{row} [data-status="running"]')  # pushed by SSE, no reload
        page.screenshot(path=str(tmp_path / "runs-running.png"), full_page=True)
        gate.touch()
        page.wait_for_selector(f'{row} [data-status="succeeded"]')
        assert client.result_sync(run_id)["outputs"] == {"result": "finished"}
    page.screenshot(path=str(tmp_path / "runs-succeeded.png"), full_page=True)

    page.click(row)
    page.wait_for_selector('#run-status [data-status="succeeded"]')
    page.wait_for_selector('svg[aria-label="steps by pool"] rect')
    assert "wait.exec" in page.inner_text("#steps")
    assert '"result": "finished"' in page.inner_text("#outputs")
    page.screenshot(path=str(tmp_path / "run-detail.png"), full_page=True)

    page.goto(f"{server.url}/dashboard/#/plans")
    page.wait_for_selector('svg[aria-label="operator graph"] g[data-op="wait.exec"]')
    page.screenshot(path=str(tmp_path / "plan.png"), full_page=True)
    page.goto(f"{server.url}/dashboard/#/cluster")
    page.wait_for_selector("#pools td")
    assert "host-cpu" in page.inner_text("#pools")
    page.goto(f"{server.url}/dashboard/#/sla")
    page.wait_for_selector('svg[aria-label="latency"]')
    assert errors == []
