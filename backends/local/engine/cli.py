"""`hetagent engine ...`: serve a model over the OpenAI-compatible HTTP API."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(help="The embedded LLM engine.", no_args_is_help=True)


@app.callback()
def engine() -> None:
    """The embedded LLM engine (a real model on this machine's CPU)."""


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise typer.Exit(2)


@app.command()
def serve(
    model: str = typer.Option("smollm2-135m", help="registry name, model path or dummy:<id>"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    kv_memory_mb: float = typer.Option(256.0, help="memory for the KV block pool, MiB"),
    block_size: int = typer.Option(16, help="tokens per KV block"),
    scheduling: str = typer.Option("fcfs", help="waiting-queue policy (fcfs, program-fcfs)"),
    kv_retention: str = typer.Option("evict", help="KV retention policy (evict, fixed-ttl)"),
    lease_seconds: float = typer.Option(2.0, help="fixed-ttl: hold a program's KV this long"),
    max_num_seqs: int = typer.Option(32, help="most sequences in one step"),
    max_num_batched_tokens: int = typer.Option(256, help="token budget of one step"),
) -> None:
    """Serve MODEL at http://HOST:PORT/v1 (chat completions, completions, models, metrics)."""
    if not 0 < port < 65536:
        _fail(f"--port must be between 1 and 65535, got {port}")
    if block_size < 1:
        _fail(f"--block-size must be at least 1, got {block_size}")
    import uvicorn

    from hetagent.backends.local.engine.engine import AsyncLLMEngine, LLMEngine
    from hetagent.backends.local.engine.models import load
    from hetagent.backends.local.engine.server import build_app

    try:
        loaded = load(model)
        engine = LLMEngine(
            loaded,
            kv_memory_mb=kv_memory_mb,
            block_size=block_size,
            scheduling=scheduling,
            kv_retention=kv_retention,
            kv_retention_options={"seconds": lease_seconds}
            if kv_retention == "fixed-ttl"
            else None,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
        )
    except ValueError as exc:
        _fail(str(exc))
    print(f"serving {engine.model_name} at http://{host}:{port}/v1", file=sys.stderr)
    uvicorn.run(build_app(AsyncLLMEngine(engine)), host=host, port=port, log_level="warning")
