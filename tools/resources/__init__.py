"""Per-tool-call resource control: one interface, three backends chosen at run time.

`detect_controller()` returns a cgroup v2, cgroup v1 or rlimit + polling controller (its `name`
and `reason` say which and why); `controller.create(call_id, Limits(...))` gives the call's
`ResourceGroup`, joined in the child before exec with `preexec_fn=group.preexec`.
"""

from .base import (
    PREFIX,
    THREAD_VARIABLES,
    CgroupFs,
    Controller,
    Events,
    Limits,
    ResourceError,
    ResourceGroup,
    Usage,
    protected_pids,
    thread_env,
)
from .detect import ENV, detect_controller, sweep

__all__ = [
    "ENV",
    "PREFIX",
    "THREAD_VARIABLES",
    "CgroupFs",
    "Controller",
    "Events",
    "Limits",
    "ResourceError",
    "ResourceGroup",
    "Usage",
    "detect_controller",
    "protected_pids",
    "sweep",
    "thread_env",
]
