"""Bounding tool-call memory: the grant broker against four baselines, on real processes.

The workload has AgentCgroup's shape ("AgentCgroup: Understanding and Controlling OS Resources
of AI Agents"; ../shared/research/resource-control.md): every agent keeps a ~185 MB runtime
alive and makes tool calls whose memory bursts are 8-48 MB (55%), 150-600 MB (35%) or
0.9-1.5 GB (10%), last 0.4-2 s and ramp at 1-3 GB/s. Each agent declares an explicit memory hint
per call that is off by up to 1.8x either way (AgentCgroup measured 1.8x across runs of one task).

Scaled to a shared 2-core VM: memory / 8, time / 8 (so ramps keep their 1-3 GB/s in scaled
bytes, CPU permitting). Every call is a real process (`python -S`) that touches real pages at
its ramp under the host's real controller, and every call also pays its interpreter (~8 MB, not
scaled: a real process's cost). The tool-memory budget is the sum over agents of each agent's
largest call divided by the oversubscription (1.1x, 2x, 4x); the runtimes get their own memory
on top. One "host" cgroup with the runtimes' memory + the budget is the machine: past it the
kernel OOM-kills. Each mechanism is also measured alone (one call at a time) for reference.

Policies, all in the same run set:
  global_limit      every runtime and call in the host group; the kernel kills at its limit
  static_per_agent  each agent (runtime + calls) in a group of runtime + budget/agents
  hint_static       each call limited to its hint (kernel kills at it), no admission control
  polling_100ms     the broker's decisions driven by 100 ms RSS polling with SIGSTOP/kill
  broker            the grant broker on the kernel's notifications (v1 eventfd / v2 events)
plus an unconstrained run (no limits) per agent count and seed as the makespan reference.

Metrics: calls completed without a kill (%), reaction time from limit hit to grow/park applied
(p50/p99 ms; hit = the allocator's last progress record before it stalled, or its computed
crossing time when polling let it run past), overshoot of usage above the grant (MB, measured,
scaled), makespan (s) and its ratio to the unconstrained run, waste (time-integrated grant - usage,
GB*s measured), agent runtimes killed, leaked cgroups.

    python benchmarks/resource_control.py [--agents 8 16] [--seeds 5] [--calls 2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import mmap
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from hetagent.policies.resources import Action, Broker, HintStaticPolicy
from hetagent.spec import ResourceHints
from hetagent.tools.resources import Limits, ResourceGroup, detect_controller
from hetagent.tools.resources.fallback import FallbackController, FallbackGroup

RESULTS = Path(__file__).parent / "results" / "resource_control.json"
MiB = 1 << 20
MEM_SCALE = 8  # memory sizes are divided by this
TIME_SCALE = 8  # durations are divided by this
RUNTIME_MB = 185
BURSTS = ((0.55, 8, 48), (0.35, 150, 600), (0.10, 900, 1500))  # (share, MB low, MB high)
DURATION_S = (0.4, 2.0)
RAMP_GBPS = (1.0, 3.0)
HINT_ERROR = 1.8
THINK_S = (0.2, 1.0)  # the LLM's turn between tool calls
OVERSUB = {"1.1x": 1.1, "2x": 2.0, "4x": 4.0}
POLICIES = ("global_limit", "static_per_agent", "hint_static", "polling_100ms", "broker")
HOST_SLACK = 4 * MiB  # page tables and the like the kernel charges beyond what processes touch
SLOT = struct.Struct("dq")  # (monotonic time, bytes touched) written by each allocator

# A real process that touches `size` bytes at `rate` bytes/s, records its progress in its slot
# of a shared file, then stays until `duration` has passed (or, for a runtime, until stdin ends).
ALLOCATOR = """
import mmap, os, struct, sys, time
size, rate, duration, slot, path = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), \
    int(sys.argv[4]), sys.argv[5]
fd = os.open(path, os.O_RDWR)
shared = mmap.mmap(fd, 0)
record = struct.Struct("dq")
chunks, done, t0 = [], 0, time.monotonic()
record.pack_into(shared, slot * 16, t0, 0)  # started
while done < size:
    n = min(1 << 18, size - done)
    record.pack_into(shared, slot * 16, time.monotonic(), done)  # about to touch n more
    chunks.append(bytearray(n))  # zero-filled: every page touched
    done += n
    ahead = t0 + done / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
record.pack_into(shared, slot * 16, time.monotonic(), done)
if duration < 0:
    sys.stdin.read()
else:
    time.sleep(max(0.0, t0 + duration - time.monotonic()))
"""


@dataclass
class ToolCall:
    burst: int  # scaled bytes the call touches beyond its interpreter
    duration: float
    rate: float  # scaled bytes per second
    hint: int  # scaled bytes declared (beyond the interpreter)
    think: float


@dataclass
class Workload:
    agents: list[list[ToolCall]]
    starts: list[float]


def make_workload(agents: int, calls: int, seed: int) -> Workload:
    rng = random.Random(seed)
    plans, starts = [], []
    for _ in range(agents):
        plan = []
        for _ in range(calls):
            _, low, high = rng.choices(BURSTS, weights=[b[0] for b in BURSTS])[0]
            size = rng.uniform(low, high) * MiB
            error = math.exp(rng.uniform(-math.log(HINT_ERROR), math.log(HINT_ERROR)))
            plan.append(
                ToolCall(
                    burst=int(size / MEM_SCALE),
                    duration=rng.uniform(*DURATION_S) / TIME_SCALE,
                    rate=rng.uniform(*RAMP_GBPS) * 1e9 / MEM_SCALE * TIME_SCALE,
                    hint=int(size * error / MEM_SCALE),
                    think=rng.uniform(*THINK_S) / TIME_SCALE,
                )
            )
        plans.append(plan)
        starts.append(rng.uniform(0, 1.0) / TIME_SCALE)
    return Workload(plans, starts)


class Progress:
    """The shared file the allocators write their (time, bytes) records into."""

    def __init__(self, slots: int) -> None:
        fd, self.path = tempfile.mkstemp(prefix="hetagent-bench-", dir="/dev/shm")
        os.ftruncate(fd, slots * SLOT.size)
        self.map = mmap.mmap(fd, 0)
        os.close(fd)
        # Removed also when the run ends early (an exception, SIGTERM through sys.exit).
        self._unlink = weakref.finalize(self, _unlink, self.path)
        self.next = 0
        self.lock = threading.Lock()

    def slot(self) -> int:
        with self.lock:
            self.next += 1
            return self.next - 1

    def read(self, slot: int) -> tuple[float, int]:
        return SLOT.unpack_from(self.map, slot * SLOT.size)

    def close(self) -> None:
        self.map.close()
        self._unlink()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def spawn(size: int, rate: float, duration: float, slot: int, progress: Progress, preexec):
    return subprocess.Popen(
        [
            sys.executable,
            "-S",
            "-c",
            ALLOCATOR,
            *map(str, (size, rate, duration, slot)),
            progress.path,
        ],
        preexec_fn=preexec,
        stdin=subprocess.PIPE if duration < 0 else subprocess.DEVNULL,
    )


def measure_footprint(ctl, progress: Progress, size: int) -> int:
    """Memory charged to a group holding one allocator that touched `size` bytes."""
    group = ctl.create("probe", Limits())
    proc = spawn(size, 1e12, -1, 0, progress, group.preexec)
    group.started(proc.pid)
    while progress.read(0)[0] == 0 or progress.read(0)[1] < size:
        time.sleep(0.005)
    time.sleep(0.05)
    used = group.usage().memory_current
    proc.stdin.close()
    proc.wait()
    group.close()
    progress.map[: SLOT.size] = bytes(SLOT.size)
    return used


@dataclass
class CallResult:
    completed: bool
    overshoot: int


@dataclass
class Run:
    """The bookkeeping of one run of one policy."""

    progress: Progress
    base: int
    reactions: list[float] = field(default_factory=list)
    decisions: list[float] = field(default_factory=list)
    unmeasured: int = 0
    results: list[CallResult] = field(default_factory=list)
    rates: dict[str, tuple[int, float]] = field(default_factory=dict)  # call -> (slot, rate)
    grants: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_action(self, action: Action, group: ResourceGroup) -> None:
        """Reaction = applied - when the call crossed the grant it had when it hit: at the
        latest its last progress record (taken just before the chunk during which it stalled),
        or earlier by what it touched past the grant (polling lets it run on)."""
        if action.kind in ("grow", "park") and action.call_id in self.rates:
            slot, rate = self.rates[action.call_id]
            t_last, touched = self.progress.read(slot)
            if t_last == 0:  # held while its interpreter started: before any record
                self.unmeasured += 1
            else:
                hit_grant = self.grants.get(action.call_id, action.grant)
                past = max(0, self.base + touched - hit_grant)
                self.reactions.append(action.applied_at - (t_last - past / rate))
            self.decisions.append(action.applied_at - action.noticed_at)
        self.grants[action.call_id] = action.grant


def run_policy(ctl, policy: str, load: Workload, budget: int, rt: int, base: int) -> dict:
    """One run: start the runtimes, let every agent make its calls, collect the metrics."""
    n = len(load.agents)
    progress = Progress(n + sum(len(a) for a in load.agents) + 1)
    run = Run(progress, base)
    host_limit = n * rt + budget + HOST_SLACK if policy != "unconstrained" else None
    host = ctl.create("host", Limits(memory_max=host_limit, oom_kill=True))
    runtimes_group = None if policy == "static_per_agent" else ctl.create("rt", Limits(), host)
    agent_groups: list[ResourceGroup] = []
    if policy == "static_per_agent":
        share = rt + budget // n + HOST_SLACK // n
        for i in range(n):
            agent_groups.append(
                ctl.create(f"agent{i}", Limits(memory_max=share, oom_kill=True), host)
            )
    broker: Broker | None = None
    poller: FallbackController | None = None
    tools = None
    if policy == "broker":
        broker = Broker(
            ctl,
            budget,
            min_step=64 * MiB // MEM_SCALE,
            tick=0.01,
            on_action=run.on_action,
            parent=host,
        )
    elif policy == "polling_100ms":
        poller = FallbackController(interval=0.1)
        tools = ctl.create("tools", Limits(), host)
        broker = Broker(
            poller, budget, min_step=64 * MiB // MEM_SCALE, tick=0.01, on_action=run.on_action
        )
    hint_static = HintStaticPolicy(ctl, parent=host) if policy == "hint_static" else None

    runtimes = []
    for i in range(n):
        group = agent_groups[i] if agent_groups else runtimes_group
        slot = progress.slot()
        proc = spawn(rt - base, 1e12, -1, slot, progress, group.preexec)
        runtimes.append((proc, slot))
    for proc, slot in runtimes:  # every runtime is up before the first call
        while proc.poll() is None and (
            progress.read(slot)[0] == 0 or progress.read(slot)[1] < rt - base
        ):
            time.sleep(0.002)

    waste = [0.0]
    live: dict[str, tuple[object, int]] = {}  # call id -> (group, grant) for the waste integral
    stop = threading.Event()

    def sample() -> None:
        last = time.monotonic()
        while not stop.wait(0.02):
            now = time.monotonic()
            if policy in ("global_limit", "unconstrained"):
                unused = (host_limit or 0) and host_limit - host.usage().memory_current
            elif policy == "static_per_agent":
                unused = sum(g.limits.memory_max - g.usage().memory_current for g in agent_groups)
            elif broker is not None:
                with broker._lock:  # a snapshot; usage is read outside the broker's lock
                    granted = [
                        (c.grant, c.lease.group)
                        for c in broker._calls.values()
                        if c.state in ("running", "parked") and c.lease is not None
                    ]
                unused = sum(grant - _current(group) for grant, group in granted)
            else:
                unused = sum(grant - g.usage().memory_current for g, grant in list(live.values()))
            waste[0] += max(0, unused) * (now - last)
            last = now

    def agent(i: int) -> None:
        time.sleep(load.starts[i])
        for k, call in enumerate(load.agents[i]):
            time.sleep(call.think)
            call_id = f"a{i}-c{k}"
            slot = progress.slot()
            run.rates[call_id] = (slot, call.rate)
            hints = ResourceHints(memory=base + call.hint)
            if broker is not None:
                lease = broker.open(call_id, hints)
                group, close = lease.group, lease.close
                run.grants[call_id] = lease.limits.memory_max
                preexec = lease.preexec
                if tools is not None:
                    preexec = _both(tools.preexec, lease.preexec)
                started = lease.started
            elif hint_static is not None:
                lease = hint_static.open(call_id, hints)
                group, close, preexec, started = (
                    lease.group,
                    lease.close,
                    lease.preexec,
                    lease.started,
                )
            else:
                parent = agent_groups[i] if agent_groups else host
                group = ctl.create(call_id, Limits(), parent)
                close, preexec, started = group.close, group.preexec, group.started
            live[call_id] = (group, group.limits.memory_max or 0)
            proc = spawn(call.burst, call.rate, call.duration, slot, progress, preexec)
            started(proc.pid)
            code = proc.wait()
            live.pop(call_id, None)
            overshoot = getattr(group, "stop_overshoot", 0)
            outcome = close()
            usage = getattr(outcome, "usage", outcome)
            grant = getattr(outcome, "grant", None) or group.limits.memory_max
            if grant and not isinstance(group, FallbackGroup):
                overshoot = max(overshoot, usage.memory_peak - grant)
            with run.lock:
                run.results.append(CallResult(code == 0, max(0, overshoot)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=agent, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    makespan = time.monotonic() - t0
    stop.set()
    sampler.join()
    killed_runtimes = sum(proc.poll() is not None for proc, _ in runtimes)
    for proc, _ in runtimes:
        if proc.poll() is None:
            proc.stdin.close()
        proc.wait()
    if broker is not None:
        broker.close()
    if poller is not None:
        poller.close()
    host.close()
    leaked = sum(
        1
        for parent in ctl.parent_dirs().values()
        if parent.is_dir()
        for p in parent.iterdir()
        if p.is_dir()
    )
    progress.close()
    calls = run.results
    return {
        "completed_pct": 100.0 * sum(c.completed for c in calls) / len(calls),
        "reactions_ms": [r * 1000 for r in run.reactions],
        "decisions_ms": [r * 1000 for r in run.decisions],
        "unmeasured": run.unmeasured,
        "overshoot_mb": max(c.overshoot for c in calls) / MiB,
        "makespan_s": makespan,
        "waste_gb_s": waste[0] / 1e9,
        "runtimes_killed": killed_runtimes,
        "leaked_cgroups": leaked,
    }


def _current(group: ResourceGroup) -> int:
    try:
        return group.usage().memory_current
    except (OSError, ValueError):  # closed between the snapshot and the read: nothing granted
        return 0


def _both(first, second):
    def preexec() -> None:
        first()
        second()

    return preexec


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(runs: list[dict], reference: list[float]) -> dict:
    reactions = [r for run in runs for r in run["reactions_ms"]]
    decisions = [r for run in runs for r in run["decisions_ms"]]
    makespans = [run["makespan_s"] for run in runs]
    return {
        "completed_pct": round(statistics.mean(r["completed_pct"] for r in runs), 2),
        "reaction_p50_ms": _round(percentile(reactions, 50)),
        "reaction_p99_ms": _round(percentile(reactions, 99)),
        "reactions": len(reactions),
        "reactions_unmeasured": sum(r["unmeasured"] for r in runs),
        "decision_p99_ms": _round(percentile(decisions, 99)),
        "overshoot_mb": round(max(r["overshoot_mb"] for r in runs), 2),
        "makespan_s": round(statistics.median(makespans), 3),
        "throughput_vs_unconstrained": round(
            statistics.median(ref / m for ref, m in zip(reference, makespans, strict=True)), 3
        ),
        "waste_gb_s": round(statistics.median(r["waste_gb_s"] for r in runs), 4),
        "runtimes_killed": sum(r["runtimes_killed"] for r in runs),
        "leaked_cgroups": sum(r["leaked_cgroups"] for r in runs),
        "runs": len(runs),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def mechanism(ctl, base: int, calls: int = 20) -> dict:
    """Each mechanism alone, one call at a time (no workload around it): a call declares 16 MB,
    touches 64 MB at 1 GB/s and is grown a step at every hit (no early growth, so it hits)."""
    out = {}
    modes = (
        (ctl.name, ctl, {}),
        ("polling_10ms", FallbackController(interval=0.01), {}),
        ("polling_100ms", FallbackController(interval=0.1), {}),
    )
    for label, controller, _ in modes:
        progress = Progress(calls + 1)
        run = Run(progress, base)
        broker = Broker(
            controller, 4096 * MiB, min_step=8 * MiB, early=None, on_action=run.on_action
        )
        overshoot = 0
        for i in range(calls):
            slot, call_id = progress.slot(), f"m{i}"
            run.rates[call_id] = (slot, 1e9)
            lease = broker.open(call_id, ResourceHints(memory=base + 16 * MiB))
            run.grants[call_id] = lease.limits.memory_max
            proc = spawn(64 * MiB, 1e9, 0, slot, progress, lease.preexec)
            lease.started(proc.pid)
            proc.wait()
            if isinstance(lease.group, FallbackGroup):
                overshoot = max(overshoot, lease.group.stop_overshoot)
            outcome = lease.close()
            if not isinstance(lease.group, FallbackGroup):
                overshoot = max(overshoot, outcome.usage.memory_peak - (outcome.grant or 0))
        broker.close()
        if controller is not ctl:
            controller.close()
        progress.close()
        ms = [r * 1000 for r in run.reactions]
        out[label] = {
            "reaction_p50_ms": _round(percentile(ms, 50)),
            "reaction_p99_ms": _round(percentile(ms, 99)),
            "hits": len(ms),
            "overshoot_mb": round(max(0, overshoot) / MiB, 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2, help="tool calls per agent")
    parser.add_argument("--json", action="store_true", help="print the JSON too")
    args = parser.parse_args()
    # Ended early (SIGTERM): exit through atexit, which closes every group and its processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    ctl = detect_controller()
    if "nested" not in ctl.features:
        raise SystemExit(f"this benchmark needs a cgroup backend for the host limit: {ctl.reason}")
    probe = Progress(1)
    base = measure_footprint(ctl, probe, 0)
    rt = measure_footprint(ctl, probe, RUNTIME_MB * MiB // MEM_SCALE)
    probe.close()

    alone = mechanism(ctl, base)
    print("each mechanism alone:", json.dumps(alone), flush=True)
    per: dict[str, dict[str, list[dict]]] = {p: {o: [] for o in OVERSUB} for p in POLICIES}
    by_agents: dict[str, dict[str, dict[int, list[dict]]]] = {
        p: {o: {n: [] for n in args.agents} for o in OVERSUB} for p in POLICIES
    }
    reference: dict[str, list[float]] = {o: [] for o in OVERSUB}
    oversized: dict[str, list[float]] = {o: [] for o in OVERSUB}
    ref_by_agents: dict[int, list[float]] = {n: [] for n in args.agents}
    started = time.monotonic()
    for n in args.agents:
        for seed in range(args.seeds):
            load = make_workload(n, args.calls, seed)
            peaks = sum(max(base + c.burst for c in plan) for plan in load.agents)
            free = run_policy(ctl, "unconstrained", load, peaks, rt, base)
            ref_by_agents[n].append(free["makespan_s"])
            for label, factor in OVERSUB.items():
                reference[label].append(free["makespan_s"])
                budget = int(peaks / factor)
                calls = [base + c.burst for plan in load.agents for c in plan]
                oversized[label].append(100 * sum(c > budget for c in calls) / len(calls))
                for policy in POLICIES:
                    result = run_policy(ctl, policy, load, budget, rt, base)
                    per[policy][label].append(result)
                    by_agents[policy][label][n].append(result)
                    print(
                        f"agents={n} seed={seed} {label:>4} {policy:<17} "
                        f"completed={result['completed_pct']:5.1f}% "
                        f"makespan={result['makespan_s']:.2f}s "
                        f"runtimes_killed={result['runtimes_killed']}",
                        flush=True,
                    )
    out: dict = {}
    for policy in POLICIES:
        out[policy] = {}
        for label in OVERSUB:
            summary = summarize(per[policy][label], reference[label])
            summary["by_agents"] = {
                str(n): summarize(by_agents[policy][label][n], ref_by_agents[n])
                for n in args.agents
            }
            out[policy][label] = summary
    out["mechanism_alone"] = alone
    out["setup"] = {
        "controller": ctl.name,
        "controller_reason": ctl.reason,
        "scaled": f"memory / {MEM_SCALE}, time / {TIME_SCALE} (ramps: 1-3 GB/s of scaled bytes)",
        "interpreter_bytes_per_call": base,
        "runtime_bytes_per_agent": rt,
        "agents": args.agents,
        "seeds": args.seeds,
        "calls_per_agent": args.calls,
        "oversubscription": "sum over agents of the largest call / tool-memory budget",
        "hints": f"explicit per call, true size x log-uniform [1/{HINT_ERROR}, {HINT_ERROR}]",
        "baselines": {
            "global_limit": "one host limit, kernel OOM killer",
            "static_per_agent": "memory limit per agent (runtime + budget/agents)",
            "hint_static": "memory limit per call = its hint (AgentCgroup without BPF)",
            "polling_100ms": "broker decisions on 100 ms RSS polling with SIGSTOP/kill",
        },
        "reference": "unconstrained run (no limits) of the same workload: throughput ratio",
        "calls_larger_than_the_whole_budget_pct": {
            label: round(statistics.mean(v), 2) for label, v in oversized.items()
        },
        "reaction": (
            "limit hit (allocator's last progress record before the stall, or its computed "
            "crossing time when polling let it run past) -> grow/park applied; decision_p99_ms "
            "is notification -> applied. The broker grows most calls early (at 75% of the "
            "grant, read on its 10 ms tick), so only calls that reach their grant count."
        ),
        "cpu": f"{os.cpu_count()} cores shared",
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print_table(out)
    if args.json:
        print(json.dumps(out, indent=2))


def print_table(out: dict) -> None:
    print(f"\ncontroller: {out['setup']['controller']}  ({out['setup']['scaled']})")
    head = f"{'policy':<17} {'over':>5} {'done%':>6} {'p50ms':>7} {'p99ms':>7} {'overMB':>7} "
    print(head + f"{'make s':>7} {'thru':>5} {'wasteGBs':>9} {'rtKill':>6} {'leak':>4}")
    for policy in POLICIES:
        for label in OVERSUB:
            s = out[policy][label]
            p50 = "-" if s["reaction_p50_ms"] is None else f"{s['reaction_p50_ms']:.2f}"
            p99 = "-" if s["reaction_p99_ms"] is None else f"{s['reaction_p99_ms']:.2f}"
            print(
                f"{policy:<17} {label:>5} {s['completed_pct']:>6.1f} {p50:>7} {p99:>7} "
                f"{s['overshoot_mb']:>7.1f} {s['makespan_s']:>7.2f} "
                f"{s['throughput_vs_unconstrained']:>5.2f} {s['waste_gb_s']:>9.3f} "
                f"{s['runtimes_killed']:>6} {s['leaked_cgroups']:>4}"
            )


if __name__ == "__main__":
    main()
