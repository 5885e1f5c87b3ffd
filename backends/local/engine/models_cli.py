"""`hetagent models …`: fetch and list the embedded engine's models."""

from __future__ import annotations

import typer

app = typer.Typer(help="Models for the embedded engine: fetch into the local cache, list.")


@app.command("pull")
def pull(name: str = typer.Argument(..., help="registry name, e.g. smollm2-135m")) -> None:
    """Fetch a model into the cache ($HETAGENT_MODELS, default ~/.cache/hetagent/models)."""
    from hetagent.backends.local.engine import models  # torch: only when a command runs

    try:
        path = models.pull(name)
    except models.ModelNotAvailable as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{name}: {path}")


@app.command("list")
def list_() -> None:
    """Known models and whether each is in the cache."""
    from hetagent.backends.local.engine import models

    for name, description, path in models.list_models():
        where = str(path) if path else f"not cached (hetagent models pull {name})"
        typer.echo(f"{name}\t{description}\t{where}")


if __name__ == "__main__":  # `python -m hetagent.backends.local.engine.models_cli pull NAME`
    app()
