"""hetagent: run agentic AI workloads on mixed hardware at the lowest cost that meets the SLA.

The public face is small: `Graph` and `@tool` to declare an agent in Python, `load` to read a
YAML document, `AgentGraph` and `Cluster` (the document models), and the `hetagent` CLI.
Names are re-exported lazily so `import hetagent.compiler` never pulls in the rest.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    "Graph": ("hetagent.sdk", "Graph"),
    "NodeRef": ("hetagent.sdk", "NodeRef"),
    "tool": ("hetagent.sdk", "tool"),
    "AgentGraph": ("hetagent.spec", "AgentGraph"),
    "Cluster": ("hetagent.spec", "Cluster"),
    "SpecError": ("hetagent.spec", "SpecError"),
    "load": ("hetagent.documents", "load_file"),
    "DocumentError": ("hetagent.documents", "DocumentError"),
    "Client": ("hetagent.client", "Client"),
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hetagent' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    return getattr(import_module(module), attribute)
