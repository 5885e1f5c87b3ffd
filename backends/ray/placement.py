"""How a plan's pools appear on a Ray cluster: a custom resource per pool (capacity: one unit per
pool replica) and a node label per pool (identity). The Kubernetes renderer gives each KubeRay
worker group the same names, so the Ray backend places actors on that group's pods. No Ray
import here: the renderer uses these names without Ray installed."""

from __future__ import annotations

import re

RESOURCE_PREFIX = "hetagent_pool_"
LABEL_PREFIX = "hetagent.dev/pool-"
LABEL_VALUE = "true"
# a Ray (Kubernetes-style) label key's name part has at most 63 characters
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def pool_resource(pool: str) -> str:
    """The custom resource a pool's nodes offer, one unit per replica of the pool."""
    return RESOURCE_PREFIX + pool


def pool_label(pool: str) -> str | None:
    """The node label (key; its value is `true`) saying a node serves `pool`. A node may serve
    several pools (a local Ray serves them all), hence a key per pool rather than one key whose
    value is the pool. None when the pool's name is too long for a label key: its resource
    still places it."""
    key = LABEL_PREFIX + pool
    return key if _LABEL_NAME.match(key.split("/", 1)[1]) else None
