"""The `hetagent` command line.

User errors (an invalid document, a missing file, an unknown kind) print one line each naming what
to fix and exit 2, with no traceback; internal errors keep theirs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hetagent.documents import DocumentError, known_ids, load_file
from hetagent.spec import (
    KINDS,
    AgentGraph,
    AgentNode,
    Cluster,
    LlmNode,
    Metadata,
    RetrieveNode,
    SubgraphNode,
    ToolNode,
    TransformNode,
)

app = typer.Typer(
    help="Orchestrate agentic AI workloads on heterogeneous clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Rich assumes 80 columns when output is piped (make, CI logs); tables read better wider.
# No emoji: `:x:` in a user's text or an error message must print as written.
out = Console(
    highlight=False, emoji=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120
)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)
USER_ERROR = 2


def _fail(message: str) -> typer.Exit:
    err.print(message, markup=False)
    return typer.Exit(USER_ERROR)


@app.command()
def validate(
    files: list[Path] = typer.Argument(..., help="AgentGraph or Cluster YAML files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
) -> None:
    """Check documents; print one line per problem (file:line: path: message)."""

    def show(path: Path, document: AgentGraph | Cluster) -> None:
        if not quiet:
            out.print(f"ok  {path}  {document.kind} {document.metadata.name}", markup=False)

    _for_each_valid(files, show)


def _for_each_valid(files: list[Path], show: Callable[[Path, AgentGraph | Cluster], None]) -> None:
    """Show each valid document and print every problem of the others; exit 2 if any was
    invalid, after all of them (one bad file should not hide the state of the rest)."""
    failed = False
    for path in files:
        try:
            document = load_file(path)
        except DocumentError as error:
            failed = True
            for issue in error.issues:
                err.print(str(issue), markup=False)
            continue
        show(path, document)
    if failed:
        raise typer.Exit(USER_ERROR)


@app.command()
def schema(
    kind: str = typer.Argument(..., help="AgentGraph or Cluster."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file."),
) -> None:
    """Print the JSON Schema of a document kind, for editors and other tools."""
    by_name = {name.lower(): model for name, model in KINDS.items()}
    model = by_name.get(kind.lower())
    if model is None:
        raise _fail(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    document = model.model_json_schema(mode="validation")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    text = json.dumps(document, indent=2) + "\n"
    _emit(text, output)


@app.command()
def describe(
    files: list[Path] = typer.Argument(..., help="AgentGraph or Cluster YAML files."),
) -> None:
    """Summarize documents: an agent's steps and stages, a cluster's pools and links."""

    def show(path: Path, document: AgentGraph | Cluster) -> None:
        if isinstance(document, AgentGraph):
            _describe_agent(document)
        else:
            assert isinstance(document, Cluster)
            _describe_cluster(document)

    _for_each_valid(files, show)


@app.command()
def compile(
    agent: Path = typer.Argument(..., help="The AgentGraph YAML file."),
    emit: str = typer.Option(
        "ops", "--emit", help="agent | ops | placed (MLIR, generic form) | plan (JSON)."
    ),
    cluster: Path | None = typer.Option(None, "--cluster", help="Cluster YAML (placed, plan)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file."),
) -> None:
    """Lower an agent through the compiler; print MLIR (or the executable plan as JSON)."""
    from hetagent.compiler import CompileError, emit_plan, lower, place, print_generic

    levels = ("agent", "ops", "placed", "plan")
    if emit not in levels:
        raise _fail(f"unknown --emit {emit!r}; use one of {', '.join(levels)}")
    if emit in ("placed", "plan") and cluster is None:
        raise _fail(f"--emit {emit} places operators on pools: give --cluster CLUSTER.yaml")
    graph = _load(agent, AgentGraph)
    try:
        module = lower(graph, "agent" if emit == "agent" else "ops")
        if emit in ("placed", "plan"):
            place(module, _plan(graph, _load(cluster, Cluster)).placement)
    except CompileError as error:
        raise _fail(f"{agent}: {error}") from None
    if emit == "plan":
        text = emit_plan(module, graph).model_dump_json(indent=2) + "\n"
    else:
        text = print_generic(module)
    _emit(text, output)


@app.command()
def plan(
    agent: Path = typer.Argument(..., help="The AgentGraph YAML file."),
    cluster: Path = typer.Option(..., "--cluster", help="The Cluster YAML file."),
    solver: str = typer.Option("auto", "--solver", help="auto | milp | heuristic."),
    objective: str = typer.Option("tco", "--objective", help="tco | latency | energy."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    plot: Path | None = typer.Option(None, "--plot", help="Draw the plan into this PNG file."),
) -> None:
    """Place an agent's operators at the lowest TCO that meets its SLA; compare with baselines."""
    from hetagent.planner.plan import PlanOptions
    from hetagent.planner.report import plan_json, plan_tables

    for option, value, allowed in (
        ("--solver", solver, ("auto", "milp", "heuristic")),
        ("--objective", objective, ("tco", "latency", "energy")),
    ):
        if value not in allowed:
            raise _fail(f"unknown {option} {value!r}; use one of {', '.join(allowed)}")
    result = _plan(
        _load(agent, AgentGraph),
        _load(cluster, Cluster),
        PlanOptions(solver=solver, objective=objective),
    )
    if plot is not None:
        from hetagent.planner.plot import plot_plan

        try:
            plot_plan(result, plot)
        except OSError as error:
            raise _fail(f"cannot write {plot}: {error.strerror}") from None
        except ValueError as error:  # matplotlib: an unknown image format
            raise _fail(f"cannot draw {plot}: {error} (use a .png file)") from None
    if as_json:
        typer.echo(json.dumps(plan_json(result), indent=2))
    else:
        out.print(plan_tables(result))


def _plan(graph: AgentGraph, cluster: Cluster, options=None):
    """The planner's placement of an agent, or a one-line error and exit 2."""
    from hetagent.planner.costmodel import CostModelError
    from hetagent.planner.plan import PlanError, plan_agent

    try:
        return plan_agent(graph, cluster, options)
    except (PlanError, CostModelError) as error:
        raise _fail(
            f"cannot plan {graph.metadata.name} on {cluster.metadata.name}: {error}"
        ) from None


POLICY_KEYS = {"kv": "kvRetention", "sched": "scheduling", "resources": "resources"}


@app.command()
def run(
    agent: Path = typer.Argument(..., help="The AgentGraph YAML file."),
    inputs: list[str] = typer.Option([], "--input", "-i", help="An input as NAME=VALUE."),
    cluster: Path | None = typer.Option(
        None, "--cluster", help="The Cluster YAML file (default: this machine's CPU)."
    ),
    backend: str = typer.Option("local", "--backend", help="local | ray."),
    address: str | None = typer.Option(
        None, "--address", help="--backend ray: auto | ray://HOST:PORT (default: a local Ray)."
    ),
    policy: str | None = typer.Option(
        None, "--policy", help="Policies as kv=NAME,sched=NAME,resources=NAME."
    ),
    db: str | None = typer.Option(
        None, "--db", help="Run store URL (default $HETAGENT_DB or ~/.local/share/hetagent)."
    ),
    kv_memory_mb: float = typer.Option(256.0, "--kv-memory-mb", help="Each engine's KV pool."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Plan an agent, compile it, and run it end to end; print its outputs and steps."""
    import asyncio

    from hetagent.backends import BACKENDS
    from hetagent.compiler import compile_plan
    from hetagent.orchestrator.progress import run_with_progress

    if backend not in BACKENDS:
        raise _fail(f"unknown --backend {backend!r}; use {' or '.join(BACKENDS)}")
    values = {}
    for item in inputs:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise _fail(f"--input {item!r}: give NAME=VALUE")
        values[name] = value
    overrides = _policies(policy)
    graph = _load(agent, AgentGraph)
    where = _load(cluster, Cluster) if cluster is not None else _this_machine()
    plan = compile_plan(graph, _plan(graph, where).placement)
    policies = (
        dict(graph.spec.policies.model_dump(by_alias=True, exclude_none=True))
        if (graph.spec.policies)
        else {}
    )
    policies |= overrides
    code = asyncio.run(
        run_with_progress(
            plan,
            values,
            base_dir=agent.resolve().parent,
            policies=policies,
            db=db,
            kv_memory_mb=kv_memory_mb,
            as_json=as_json,
            console=out,
            fail=_fail,
            backend=backend,
            address=address,
        )
    )
    raise typer.Exit(code)


def _policies(text: str | None) -> dict[str, str]:
    """`kv=lease,sched=plas` as spec policy keys, each name checked."""
    from hetagent import policies as registry

    chosen: dict[str, str] = {}
    for item in filter(None, (text or "").split(",")):
        key, equals, name = item.strip().partition("=")
        if not equals or key not in POLICY_KEYS:
            raise _fail(
                f"--policy {item!r}: give KIND=NAME with KIND one of {', '.join(POLICY_KEYS)}"
            )
        kind = {"kv": "kv_retention", "sched": "scheduling"}.get(key)
        if kind is not None:
            try:
                registry.get(kind, name)
            except (ValueError, TypeError) as error:
                raise _fail(f"--policy {item!r}: {error}") from None
        chosen[POLICY_KEYS[key]] = name
    return chosen


def _this_machine() -> Cluster:
    from hetagent.orchestrator.serve_cli import this_machine

    return this_machine()


def _mount_component_clis() -> None:
    """Sub-commands that live with their component."""
    from hetagent.backends.k8s.cli import app as k8s_app
    from hetagent.backends.local.engine.cli import app as engine_app
    from hetagent.backends.local.engine.models_cli import app as models_app
    from hetagent.backends.sim import cli as sim_cli
    from hetagent.orchestrator.serve_cli import serve, submit
    from hetagent.tools.cli import app as index_app
    from hetagent.tools.resources.cli import app as resources_app

    app.add_typer(index_app, name="index")
    app.add_typer(models_app, name="models")
    app.add_typer(engine_app, name="engine")
    app.add_typer(k8s_app, name="k8s")
    app.command()(serve)
    app.command()(submit)
    app.add_typer(sim_cli.app, name="trace")
    app.command("simulate")(sim_cli.simulate)
    app.add_typer(resources_app, name="resources")


_mount_component_clis()

costmodel_app = typer.Typer(help="The cost model: predict phase latencies, calibrate it.")
app.add_typer(costmodel_app, name="costmodel")


@costmodel_app.command("predict")
def costmodel_predict(
    model: str | None = typer.Option(None, "--model", help="A model id of the catalog."),
    device: str | None = typer.Option(None, "--device", help="A device id of the catalog."),
    devices: int = typer.Option(1, "--devices", min=1, help="Tensor-parallel devices."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 | fp8 | int8 (weights)."),
    batch: int = typer.Option(1, "--batch", min=1),
    input_len: int = typer.Option(1, "--input-len", min=1),
    output_len: int = typer.Option(1, "--output-len", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    csv_file: Path | None = typer.Option(
        None, "--csv", help="Rows of model,device,devices,dtype,batch,input_len,output_len."
    ),
) -> None:
    """Prefill, decode step, TTFT, throughput and end-to-end latency of a configuration."""
    import csv
    import io

    from hetagent.planner.costmodel import CostModel, CostModelError

    cost_model = CostModel()
    columns = ("model", "device", "devices", "dtype", "batch", "input_len", "output_len")
    try:
        if csv_file is None:
            if model is None or device is None:
                raise _fail("give --model and --device (or --csv FILE)")
            prediction = cost_model.predict(
                model,
                device,
                devices=devices,
                dtype=dtype,
                batch=batch,
                input_len=input_len,
                output_len=output_len,
            )
            if as_json:
                typer.echo(json.dumps(prediction.as_dict(), indent=2))
            else:
                for key, value in prediction.as_dict().items():
                    out.print(
                        f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}"
                    )
            return
        rows = list(csv.DictReader(io.StringIO(_read(csv_file))))
        writer = None
        for line, row in enumerate(rows, start=2):
            try:
                values = {key: row[key] for key in columns}
                prediction = cost_model.predict(
                    values["model"],
                    values["device"],
                    devices=int(values["devices"] or 1),
                    dtype=values["dtype"] or "bf16",
                    batch=int(values["batch"] or 1),
                    input_len=int(values["input_len"]),
                    output_len=int(values["output_len"]),
                )
            except (KeyError, ValueError) as error:
                raise _fail(f"{csv_file}:{line}: {error} (columns: {','.join(columns)})") from None
            if writer is None:
                writer = csv.DictWriter(sys.stdout, [*row, *prediction.as_dict()])
                writer.writeheader()
            writer.writerow(row | prediction.as_dict())
    except (CostModelError, ValueError) as error:  # unknown ids, dtypes the model cannot run
        raise _fail(str(error)) from None


@costmodel_app.command("calibrate")
def costmodel_calibrate(
    measurements: Path = typer.Option(
        ..., "--measurements", help="CSV of measured metrics (benchmarks/data/ has one)."
    ),
    split: str = typer.Option("calibration", "--split", help="calibration | all (rows used)."),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Where to write the fitted efficiencies (default: $HETAGENT_EFFICIENCY, "
        "else ~/.config/hetagent/efficiency.csv).",
    ),
) -> None:
    """Fit eta_compute, eta_memory and overhead per device and phase to measurements."""
    import datetime
    import os

    from hetagent.planner.calibrate import (
        fit,
        mape,
        packaged_efficiencies,
        predictable,
        read_measurements,
        write_efficiencies,
    )
    from hetagent.planner.costmodel import CostModel, CostModelError

    if split not in ("calibration", "all"):
        raise _fail(f"unknown --split {split!r}; use one of calibration, all")
    if output is None:
        default = Path.home() / ".config/hetagent/efficiency.csv"
        output = Path(os.environ.get("HETAGENT_EFFICIENCY") or default)
    try:
        rows = read_measurements(measurements)
    except OSError as error:
        raise _fail(f"cannot read {measurements}: {error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise _fail(str(error)) from None
    rows = [row for row in rows if split == "all" or row.split == split]
    usable, skipped = predictable(rows)
    if not usable:
        raise _fail(f"{measurements}: no rows with a batch in split {split!r} to fit")
    priors = packaged_efficiencies()
    try:
        fitted = fit(rows, origin=str(measurements))
        before, after = CostModel(efficiencies=priors), CostModel(efficiencies=priors | fitted)
        errors = {}
        for device in dict.fromkeys(device for device, _ in fitted):
            mine = [row for row in usable if row.device == device]
            errors[device] = (mape(before, mine), mape(after, mine), len(mine))
        overall = (mape(before, usable), mape(after, usable))
    except (ValueError, CostModelError) as error:
        raise _fail(str(error)) from None
    try:
        write_efficiencies(output, fitted, f"{datetime.date.today()}, split {split}")
    except OSError as error:
        raise _fail(f"cannot write {output}: {error.strerror or error}") from None

    table = Table(show_edge=False, pad_edge=False)
    for column in ("device", "phase", "eta_compute", "eta_memory", "overhead ms", "from"):
        table.add_column(column)
    for column in ("rows", "MAPE before %", "MAPE after %"):
        table.add_column(column, justify="right")
    for (device, phase), value in fitted.items():
        status = "fitted" if value.source.startswith("fitted") else "prior (too few rows)"
        before_pct, after_pct, count = errors[device]
        first = phase == "prefill"
        table.add_row(
            *map(
                escape,
                (
                    device if first else "",
                    phase,
                    f"{value.eta_compute:.3f}",
                    f"{value.eta_memory:.3f}",
                    f"{value.overhead_s * 1000:.2f}",
                    status,
                    str(count) if first else "",
                    _percent(before_pct) if first else "",
                    _percent(after_pct) if first else "",
                ),
            )
        )
    out.print(table)
    out.print(
        f"{len(usable)} rows: MAPE {_percent(overall[0])}% with the packaged priors, "
        f"{_percent(overall[1])}% fitted; skipped {len(skipped)} rows without a batch "
        f"(max-load runs)",
        markup=False,
    )
    out.print(f"wrote {output}", markup=False)


def _percent(value: float) -> str:
    return "—" if value != value else f"{value:.1f}"  # nan: no rows


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise _fail(f"cannot read {path}: {error}") from None


def _load(path: Path, kind: type) -> AgentGraph | Cluster:
    """A document of the expected kind, or a one-line error and exit 2."""
    try:
        document = load_file(path)
    except DocumentError as error:
        raise _fail(str(error)) from None
    if not isinstance(document, kind):
        raise _fail(f"{path}: expected kind {kind.__name__}, got {document.kind}")
    return document


def _emit(text: str, output: Path | None) -> None:
    """Print the result, or write it to `output`."""
    if output is None:
        typer.echo(text, nl=False)
    else:
        _write(output, text)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise _fail(f"cannot write {path}: {error.strerror}") from None


def _step_summary(graph: AgentGraph, node: object) -> tuple[str, str]:
    """What a step runs, and the planner hints it carries."""
    models = graph.spec.models
    if isinstance(node, LlmNode):
        output_tokens = node.expected_output_tokens or node.max_tokens
        tokens = f"{node.expected_input_tokens or '?'} in / {output_tokens} out"
        return models[node.model].id, tokens
    if isinstance(node, AgentNode):
        p95 = node.p95_turns or node.max_turns
        turns = f"{node.expected_turns or '?'} turns (p95 {p95}, max {node.max_turns})"
        return f"{models[node.model].id} + {', '.join(node.tools)}", turns
    if isinstance(node, ToolNode):
        hint = f"{node.expected_duration_seconds} s" if node.expected_duration_seconds else ""
        return node.tool, hint
    if isinstance(node, RetrieveNode):
        return f"index {node.index} (k={node.k})", ""
    if isinstance(node, TransformNode):
        return ("template" if node.template is not None else f"parse {node.parse.format}"), ""
    assert isinstance(node, SubgraphNode)
    return node.ref, ""


def _describe_agent(graph: AgentGraph) -> None:
    spec = graph.spec
    out.print(_title("AgentGraph", graph.metadata))
    dag = graph.dag()
    table = Table(show_edge=False, pad_edge=False)
    for column in ("step", "type", "runs", "after", "hints"):
        table.add_column(column)
    for node in spec.nodes:
        runs, hints = _step_summary(graph, node)
        after = ", ".join(sorted(dag.predecessors(node.name)))
        table.add_row(*map(escape, (node.name, node.type, runs, after, hints)))
    out.print(table)
    stages = [" + ".join(sorted(stage)) for stage in nx.topological_generations(dag)]
    out.print("stages: " + " → ".join(stages), markup=False)
    if spec.inputs:
        out.print(
            "inputs: "
            + ", ".join(
                name + ("" if declared.required else " (optional)")
                for name, declared in spec.inputs.items()
            ),
            markup=False,
        )
    if spec.outputs:
        out.print("outputs: " + ", ".join(spec.outputs), markup=False)
    for label, section in (
        ("slo", spec.slo),
        ("traffic", spec.traffic),
        ("policies", spec.policies),
    ):
        if section is not None:
            values = section.model_dump(exclude_none=True)
            out.print(f"{label}: " + ", ".join(f"{k}={v}" for k, v in values.items()), markup=False)
    out.print()


def _describe_cluster(cluster: Cluster) -> None:
    devices = known_ids().devices
    out.print(_title("Cluster", cluster.metadata))
    table = Table(show_edge=False, pad_edge=False)
    for column in ("pool", "device", "count", "memory GB", "bf16 TFLOP/s", "ownership", "price"):
        table.add_column(column)
    for pool in cluster.spec.pools:
        device = devices[pool.device]
        if pool.price_per_hour is not None:
            price = f"${pool.price_per_hour:g}/h (set)"
        elif pool.ownership == "rented":
            price = f"${device.rent_usd_per_hour:g}/h"
        else:
            purchase = device.purchase_usd if pool.purchase_price is None else pool.purchase_price
            price = f"${purchase:,.0f} each"
        cells = (
            pool.name,
            pool.device,
            str(pool.count),
            _number(device.memory_gb),
            _number(device.bf16_tflops),
            pool.ownership,
            price,
        )
        table.add_row(*map(escape, cells))
    out.print(table)
    for link in cluster.spec.links:
        out.print(
            f"link {' ↔ '.join(link.pools)}: {link.bandwidth_gb_per_second:g} GB/s, "
            f"{link.latency_microseconds:g} µs",
            markup=False,
        )
    if cluster.spec.default_link is not None:
        default = cluster.spec.default_link
        out.print(
            f"other pairs: {default.bandwidth_gb_per_second:g} GB/s, "
            f"{default.latency_microseconds:g} µs",
            markup=False,
        )
    energy, amortization = cluster.spec.energy, cluster.spec.amortization
    out.print(
        f"energy ${energy.price_per_kwh:g}/kWh, PUE {energy.pue:g}; "
        f"amortized over {amortization.years:g} years at {amortization.rate:.0%}",
        markup=False,
    )
    out.print()


def _title(kind: str, metadata: Metadata) -> str:
    """`Kind name — description` as rich markup; the user's text is escaped, not interpreted."""
    title = f"{kind} [bold]{metadata.name}[/bold]"
    return title + (f" — {escape(metadata.description)}" if metadata.description else "")


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
