"""`hetagent resources probe|sweep` (mounted by the lead as a sub-app)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hetagent.tools.resources import ENV
from hetagent.tools.resources.cli import app


def test_probe_names_the_backend_and_why():
    result = CliRunner().invoke(app, ["probe", "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["controller"] in {"cgroup-v2", "cgroup-v1", "fallback"}
    assert info["reason"] and "memory" in info["features"]


def test_probe_with_an_unknown_forced_backend_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(ENV, "cgroups")
    result = CliRunner().invoke(app, ["probe"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {ENV}='cgroups' must be one of cgroup-v2, cgroup-v1, fallback"
    ]


def test_sweep_reports_what_it_removed():
    result = CliRunner().invoke(app, ["sweep"])
    assert result.exit_code == 0 and "leftover group(s) removed" in result.output
