"""`hetagent serve` (the API, the dashboard and the runtime in one process) and `hetagent submit`
(a run from the command line, through the API).

`serve` keeps runs in the durable store: a server killed mid-run (SIGKILL included) resumes the
unfinished runs when it starts again. Tokens map to tenants (`--tokens FILE` or
`$HETAGENT_TOKENS`); with neither, serve makes one token for the tenant `default` and writes it
where `hetagent submit` and `hetagent.Client` look for it.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

import typer

from hetagent.client import DEFAULT_URL, Client, ClientError, RunFailed, token_file

app = typer.Typer(
    help="Serve the API and dashboard; submit runs to it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
USER_ERROR = 2


def _fail(message: str) -> typer.Exit:
    print(message, file=sys.stderr)
    return typer.Exit(USER_ERROR)


def this_machine():
    """One pool: this machine's CPU, at $0 an hour (a machine one has costs nothing more)."""
    from hetagent.spec import parse_document

    return parse_document(
        {
            "apiVersion": "hetagent.dev/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": "this-machine"},
            "spec": {
                "pools": [
                    {
                        "name": "cpu",
                        "device": "host-cpu",
                        "count": 1,
                        "ownership": "owned",
                        "pricePerHour": 0,
                    }
                ]
            },
        }
    )


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
    db: str | None = typer.Option(
        None, "--db", help="Run store URL (default $HETAGENT_DB or ~/.local/share/hetagent)."
    ),
    clusters: list[Path] = typer.Option(
        [],
        "--cluster",
        help="Cluster YAML; the first is where runs execute (default: this machine's CPU), "
        "every one is offered in the plans view. Repeatable.",
    ),
    backend: str = typer.Option("local", "--backend", help="local | ray."),
    address: str | None = typer.Option(
        None, "--address", help="--backend ray: auto | ray://HOST:PORT (default: a local Ray)."
    ),
    tokens: Path | None = typer.Option(
        None, "--tokens", help="YAML file `tokens: {TOKEN: TENANT}` (else $HETAGENT_TOKENS)."
    ),
    base_dir: Path = typer.Option(
        Path("."), "--base-dir", help="Where agents' relative paths (index documents) resolve."
    ),
    kv_memory_mb: float = typer.Option(256.0, "--kv-memory-mb", help="Each engine's KV pool."),
    max_body_kb: int = typer.Option(1024, "--max-body-kb", help="Largest request body."),
) -> None:
    """Run the HTTP API, the ops dashboard and the runtime; resume runs left unfinished."""
    import uvicorn

    from hetagent.documents import DocumentError, load_file
    from hetagent.orchestrator.runtime import Runtime
    from hetagent.orchestrator.server import Tenants, create_app, load_tenants
    from hetagent.orchestrator.store import RunStore, StoreError
    from hetagent.spec import Cluster

    loaded = []
    for path in clusters:
        try:
            cluster = load_file(path)
        except DocumentError as error:
            raise _fail(str(error.issues[0])) from None
        if not isinstance(cluster, Cluster):
            raise _fail(f"{path}: expected a Cluster, got {cluster.kind}")
        loaded.append(cluster)
    if not loaded:
        loaded.append(this_machine())
    if not base_dir.is_dir():
        raise _fail(f"--base-dir {base_dir}: not a directory")
    chosen = _backend(
        backend, kv_memory_mb, address, [p.name for c in loaded for p in c.spec.pools]
    )
    try:
        tenants = load_tenants(tokens)
    except ValueError as error:
        raise _fail(str(error)) from None
    try:
        store = RunStore(db)
    except StoreError as error:
        raise _fail(str(error)) from None
    if tenants is None:
        tenants = Tenants({_generated_token(): "default"})
    runtime = Runtime(chosen, store)
    url = f"http://{host}:{port}"

    def ready(resumed: list[str]) -> None:
        note = f"; resumed {len(resumed)} unfinished runs" if resumed else ""
        print(f"hetagent serving on {url} (dashboard {url}/dashboard/){note}", file=sys.stderr)

    application = create_app(
        runtime,
        store,
        tenants,
        clusters=loaded,
        base_dir=base_dir,
        max_body_bytes=max_body_kb * 1024,
        on_ready=ready,
    )
    config = uvicorn.Config(application, host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    try:
        server.run()
    except OSError as error:  # the port is taken, the address is not ours
        raise _fail(f"cannot listen on {host}:{port}: {error.strerror}") from None
    finally:
        store.close()
    if not server.started:
        raise typer.Exit(1)


def _backend(name: str, kv_memory_mb: float, address: str | None, pools: list[str]):
    from hetagent.backends import make_backend

    try:
        return make_backend(name, kv_memory_mb=kv_memory_mb, address=address, pools=pools)
    except ValueError as error:
        raise _fail(f"--backend {name}: {error}") from None


def _generated_token() -> str:
    """A fresh token for the tenant `default`, written (owner-only) where clients look."""
    token = secrets.token_urlsafe(24)
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    print(f"no tokens configured: tenant 'default' uses the token in {path}", file=sys.stderr)
    return token


@app.command()
def submit(
    agent: str = typer.Argument(..., help="An AgentGraph YAML file, or a stored agent's name."),
    inputs: list[str] = typer.Option([], "--input", "-i", help="An input as NAME=VALUE."),
    server: str = typer.Option(
        None, "--server", help=f"The service URL (default $HETAGENT_SERVER or {DEFAULT_URL})."
    ),
    token: str | None = typer.Option(None, "--token", help="Bearer token (else $HETAGENT_TOKEN)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run; print its outputs."),
) -> None:
    """Submit a run to a hetagent service; print its id (or, with --wait, its outputs)."""
    import asyncio

    values = {}
    for item in inputs:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise _fail(f"--input {item!r}: give NAME=VALUE")
        values[name] = value
    url = server or os.environ.get("HETAGENT_SERVER") or DEFAULT_URL
    try:
        client = Client(url, token=token)
    except ValueError as error:
        raise _fail(str(error)) from None

    async def go() -> int:
        async with client:
            run_id = await client.submit(agent, values)
            if not wait:
                print(run_id)
                return 0
            print(f"run {run_id}", file=sys.stderr)
            async for event in client.events(run_id):
                if event["type"].startswith("step."):
                    data = event["data"]
                    print(f"  {event['type'][5:]:<9} {data.get('key')}", file=sys.stderr)
            try:
                run = await client.result(run_id)
            except RunFailed as error:
                print(str(error), file=sys.stderr)
                return 1
            print(json.dumps(run["outputs"], indent=2))
            return 0

    try:
        code = asyncio.run(go())
    except ClientError as error:
        raise _fail(f"{url}: {error.detail}") from None
    except ValueError as error:  # an unreadable agent file
        raise _fail(str(error)) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
