"""`hetagent k8s`: render an agent's Kubernetes manifests, print the CRDs, run the operator.

User errors (a missing file, an invalid document, an agent the cluster cannot run) print one line
naming what to fix and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(
    help="Deploy on Kubernetes: KubeRay manifests, hetagent's CRDs and the AgentRun operator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
USER_ERROR = 2


def _fail(message: str) -> typer.Exit:
    print(" ".join(message.split()), file=sys.stderr)  # always one line
    return typer.Exit(USER_ERROR)


def _load(path: Path, kind: type):
    """A document of the expected kind, or a one-line error (the first problem; the count)."""
    from hetagent.documents import DocumentError, load_file

    try:
        document = load_file(path)
    except DocumentError as error:
        more = len(error.issues) - 1
        extra = f" (and {more} more: hetagent validate {path})" if more > 0 else ""
        raise _fail(f"{error.issues[0]}{extra}") from None
    if not isinstance(document, kind):
        raise _fail(f"{path}: expected kind {kind.__name__}, got {document.kind}")
    return document


@app.command()
def render(
    agent: Path = typer.Argument(..., help="The AgentGraph YAML file."),
    cluster: Path = typer.Option(..., "--cluster", help="The Cluster YAML file."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the YAML into."),
    image: str | None = typer.Option(
        None, "--image", help="Container image with hetagent and Ray (default hetagent/hetagent)."
    ),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="Namespace of every object (default hetagent)."
    ),
) -> None:
    """Plan AGENT on CLUSTER and write validated manifests: RayCluster, control plane, CRDs."""
    from hetagent.backends.k8s.render import (
        DEFAULT_IMAGE,
        DEFAULT_NAMESPACE,
        RenderError,
        validate,
    )
    from hetagent.backends.k8s.render import render as render_manifests
    from hetagent.planner.costmodel import CostModelError
    from hetagent.planner.plan import PlanError, plan_agent
    from hetagent.spec import AgentGraph, Cluster

    graph = _load(agent, AgentGraph)
    where = _load(cluster, Cluster)
    if output.exists() and not output.is_dir():
        raise _fail(f"--output {output}: not a directory")
    try:
        plan = plan_agent(graph, where)
    except (PlanError, CostModelError) as error:
        raise _fail(
            f"cannot plan {graph.metadata.name} on {where.metadata.name}: {error}"
        ) from None
    try:
        rendered = render_manifests(
            graph,
            where,
            plan,
            image=image or DEFAULT_IMAGE,
            namespace=namespace or DEFAULT_NAMESPACE,
            base_dir=agent.resolve().parent,
        )
        validate(rendered)
    except RenderError as error:
        raise _fail(str(error)) from None
    try:
        written = rendered.write(output)
    except OSError as error:
        raise _fail(f"cannot write {output}: {error.strerror}") from None
    for warning in rendered.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    groups = ", ".join(
        f"{g.name} {g.replicas}x{g.devices_per_pod} {g.pool.device}" for g in rendered.groups
    )
    typer.echo(f"wrote {len(written)} files to {output} (worker groups: {groups or 'none'})")


@app.command()
def crds(
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file."),
) -> None:
    """Print hetagent's CustomResourceDefinitions (AgentGraph, AgentRun, DevicePool) as YAML."""
    from hetagent.backends.k8s.crds import crds as all_crds
    from hetagent.backends.k8s.render import dump_all

    text = dump_all(all_crds())
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise _fail(f"cannot write {output}: {error.strerror}") from None


@app.command()
def operator(
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="Watch this namespace (default: every namespace)."
    ),
    db: str | None = typer.Option(
        None, "--db", help="Run store URL (default $HETAGENT_DB or ~/.local/share/hetagent)."
    ),
    cluster: Path | None = typer.Option(
        None, "--cluster", help="Cluster YAML for namespaces without DevicePools."
    ),
    backend: str = typer.Option("local", "--backend", help="local | ray."),
    address: str | None = typer.Option(
        None, "--address", help="Ray address for --backend ray (ray://HOST:10001 or auto)."
    ),
    kv_memory_mb: float = typer.Option(256.0, "--kv-memory-mb", help="Each engine's KV pool."),
    base_dir: Path = typer.Option(
        Path("."), "--base-dir", help="Where agents' relative paths (index documents) resolve."
    ),
    server: str | None = typer.Option(
        None, "--server", help="API server URL without credentials (kubectl proxy)."
    ),
) -> None:
    """Run the AgentRun operator: each AgentRun becomes a run; its status follows the run."""
    from hetagent.backends.k8s.operator import OperatorError, run_operator

    try:
        run_operator(
            namespace,
            db=db,
            cluster=cluster,
            backend=backend,
            address=address,
            kv_memory_mb=kv_memory_mb,
            base_dir=base_dir,
            server=server,
        )
    except OperatorError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
