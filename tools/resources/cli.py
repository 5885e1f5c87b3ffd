"""`hetagent resources ...`: which controller this host gives tool calls, and the sweep."""

from __future__ import annotations

import json
import sys

import typer

from . import ResourceError, detect_controller, sweep

app = typer.Typer(help="Per-tool-call resource control on this host.", no_args_is_help=True)


@app.command()
def probe(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the backend tool calls get here (cgroup v2, cgroup v1 or fallback) and why."""
    try:
        controller = detect_controller()
    except ResourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    info = {
        "controller": controller.name,
        "reason": controller.reason,
        "features": sorted(controller.features),
    }
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['controller']}: {info['reason']}")
        print(f"enforced: {', '.join(info['features'])}")


@app.command("sweep")
def sweep_command() -> None:
    """Remove resource groups left behind by hetagent processes that have died."""
    removed = sweep()
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} leftover group(s) removed")
