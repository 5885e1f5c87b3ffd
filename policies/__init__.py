"""hetagent.policies: named, pluggable policies, looked up by kind and name."""

from __future__ import annotations

from typing import Any


def get(kind: str, name: str, **options: Any) -> Any:
    """Build the policy `name` of `kind` ("scheduling" or "kv_retention") with its options."""
    from hetagent.policies import kv_retention, scheduling

    registries = {"scheduling": scheduling.POLICIES, "kv_retention": kv_retention.POLICIES}
    if kind not in registries:
        raise ValueError(f"unknown policy kind {kind!r}; choose one of {sorted(registries)}")
    if name not in registries[kind]:
        known = sorted(registries[kind])
        raise ValueError(f"unknown {kind} policy {name!r}; choose one of {known}")
    return registries[kind][name](**options)
