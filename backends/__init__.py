"""hetagent.backends: where a plan's operators run (the protocol is in `base.py`)."""

from __future__ import annotations

from typing import Any

BACKENDS = ("local", "ray")


def make_backend(
    name: str,
    policies: dict[str, str] | None = None,
    *,
    kv_memory_mb: float = 256.0,
    address: str | None = None,
    pools: list[str] | None = None,
) -> Any:
    """The backend `hetagent run`, `serve` and the operator execute on: `local` (this process)
    or `ray` (`address`: "auto", "ray://HOST:PORT", or None to start a local Ray, which offers
    `pools` when given: a local Ray cannot add resources once started). ValueError, one line,
    for a name or an address that cannot be used."""
    if name == "local":
        if address is not None:
            raise ValueError("--address is for --backend ray; the local backend runs in process")
        from hetagent.backends.local.backend import LocalBackend

        return LocalBackend(policies, kv_memory_mb=kv_memory_mb)
    if name == "ray":
        from hetagent.backends.ray.backend import RayBackend

        offered = {pool: 1 for pool in pools} if pools else None
        return RayBackend(policies, kv_memory_mb=kv_memory_mb, address=address, pools=offered)
    raise ValueError(f"unknown backend {name!r}; use {' or '.join(BACKENDS)}")
