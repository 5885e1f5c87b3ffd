"""A fast placement for graphs too large for the MILP (1,000 tasks on 20 pools well under 1 s).

The production recipe of `shared/research/placement-tco.md`. `repair`: while the SLA is
violated, make the move on the critical path with the most latency gained per dollar. `descend`:
move tasks with slack to cheaper options while the SLA holds, alone or as a couple (a prefill and
its decode: two neighbours nothing else joins) onto one pool, then try exchanges (a task made
cheaper although the SLA breaks, `repair` elsewhere, kept if the whole is cheaper). Three starts
are repaired and descended, the cheapest result wins: every task on its cheapest option, on its
fastest, and on the one that finishes it first given its inputs' places (which fixes transfers
the fastest start ignores); the cheapest start spends the slack on whatever it upgrades first,
the others on whatever they downgrade first, and neither is right everywhere.

Moving one task changes only the paths through it, so with every task's earliest start (`est`)
and longest remaining path (`tail`, its own latency included) a move's effect on the SLA is exact
in O(degree). The descent sweeps the tasks in topological order, so when it reaches a task its
predecessors' `est` are final and its successors' `tail` untouched: a whole sweep costs
O(options x degree), not a longest-path update per move. Elsewhere a move repairs `est` and
`tail` only where they change.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Iterable, Mapping

from .problem import Infeasible, PlacementProblem, Solution, within_sla

TIE = 1e-12  # relative: paths this close to the longest count as critical
MAX_ROUNDS = 8  # of the descent; each round that finds nothing ends it earlier
HOMOGENEOUS_STARTS = 3  # single-pool starts tried when the usual three cannot be repaired
LOOK_AHEAD_WORK = 20_000  # tasks x look-ahead tries per placement, for when `repair` is stuck
EXCHANGE_WORK = 5_000  # tasks x exchanges tried: every one on small graphs, a few on 1,000 tasks

Move = dict[int, tuple[int, float, float]]  # task -> (pool, latency, cost) after the move


def cheapest_assignment(
    problem: PlacementProblem, max_latency_s: float | None = None
) -> dict[str, str]:
    """Every task on its cheapest option (the faster of equally cheap ones), the SLA ignored.

    With `max_latency_s`, only options that fast count: raises `Infeasible` if a task has none.
    """
    assignment = {}
    for task in problem.tasks:
        options = problem.options[task]
        in_time = [p for p, o in options.items() if within_sla(o.latency_s, max_latency_s)]
        if not in_time:
            raise Infeasible(f"no pool runs {task} within {max_latency_s:.6g} s")
        assignment[task] = min(in_time, key=lambda p: (options[p].cost_usd, options[p].latency_s))
    return assignment


def fastest_assignment(problem: PlacementProblem) -> dict[str, str]:
    """Every task on its fastest option (the cheaper of equally fast ones), transfers ignored."""
    options = problem.options
    return {
        t: min(options[t], key=lambda p, o=options[t]: (o[p].latency_s, o[p].cost_usd))
        for t in problem.tasks
    }


def homogeneous_assignment(problem: PlacementProblem, pool: str) -> dict[str, str] | None:
    """Every task on `pool`, but host tasks on their cheapest pool; None if some other task
    cannot run there."""
    cheapest = cheapest_assignment(problem) if problem.host_tasks else {}
    assignment = {}
    for task in problem.tasks:
        if task in problem.host_tasks:
            assignment[task] = pool if pool in problem.options[task] else cheapest[task]
        elif pool in problem.options[task]:
            assignment[task] = pool
        else:
            return None
    return assignment


def solve_heuristic(problem: PlacementProblem) -> Solution:
    """The cheapest placement meeting the SLA found from the three starts. If none can be
    repaired to meet it, the fastest single-pool placements (no transfers to fix) are tried as
    starts too; raises `Infeasible` with the fastest placement found if none of them can be."""
    problem.check_placeable()
    if not problem.tasks:
        return problem.evaluate({})
    sla = problem.sla_seconds
    placements = [_Placement(problem, cheapest_assignment(problem))]
    if sla is not None:  # without an SLA there is no slack to spend: the cheapest start it is
        fastest = fastest_assignment(problem)
        placements += [_Placement(problem, fastest), _Placement(problem, fastest).finish_early()]
    met = [placement for placement in placements if placement.repair(sla)]
    for start in [] if met else _fastest_homogeneous(problem):
        placements.append(_Placement(problem, start))
        if placements[-1].repair(sla):
            met.append(placements[-1])
            break
    if not met:
        tried = (problem.evaluate(placement.assignment()) for placement in placements)
        raise Infeasible.sla_missed(sla, min(tried, key=lambda s: s.latency_s), proven=False)
    for placement in met:
        placement.descend(sla)
    best = min(met, key=_Placement.total_cost)
    best.descend(sla, exchanges=max(1, EXCHANGE_WORK // len(problem.tasks)))
    return problem.evaluate(best.assignment())


def solve_min_latency_heuristic(problem: PlacementProblem) -> Solution:
    """The fastest placement found, then made cheaper without getting slower. `repair` with a
    zero SLA shortens each start (fastest options, earliest finishes, the fastest single pool)
    until no move helps."""
    problem.check_placeable()
    if not problem.tasks:
        return problem.evaluate({})
    starts = [fastest_assignment(problem), *_fastest_homogeneous(problem)[:1]]
    placements = [_Placement(problem, start) for start in starts]
    placements.append(_Placement(problem, starts[0]).finish_early())
    for placement in placements:
        placement.repair(0.0)
    fastest = min(placements, key=_Placement.makespan)
    fastest.descend(fastest.makespan())
    return problem.evaluate(fastest.assignment())


def _fastest_homogeneous(problem: PlacementProblem) -> list[dict[str, str]]:
    """The single-pool placements, fastest first, at most HOMOGENEOUS_STARTS of them."""
    found = filter(None, (homogeneous_assignment(problem, pool) for pool in problem.pools))
    ranked = sorted(found, key=lambda start: problem.evaluate(start).latency_s)
    return ranked[:HOMOGENEOUS_STARTS]


class _Placement:
    """A placement under improvement: tasks are indices in topological order, pools indices."""

    def __init__(self, problem: PlacementProblem, start: Mapping[str, str]):
        self.problem = problem
        self.tasks = problem.tasks
        index = {task: i for i, task in enumerate(self.tasks)}
        names = dict.fromkeys(problem.pools)
        for task in self.tasks:
            names |= dict.fromkeys(problem.options[task])
        self.pool_names = list(names)
        pool_index = {pool: k for k, pool in enumerate(self.pool_names)}
        self.n_pools = len(self.pool_names)
        # per task: (pool, latency, cost) options, cheapest first
        self.options = [
            sorted(
                ((pool_index[p], o.latency_s, o.cost_usd) for p, o in problem.options[t].items()),
                key=lambda option: (option[2], option[1]),
            )
            for t in self.tasks
        ]
        self.preds: list[list[tuple[int, int]]] = [[] for _ in self.tasks]  # (source, edge)
        self.succs: list[list[tuple[int, int]]] = [[] for _ in self.tasks]  # (target, edge)
        self.ends = [(index[e.source], index[e.target]) for e in problem.edges]
        if any(u >= v for u, v in self.ends):  # every sweep and propagation relies on it
            raise ValueError("PlacementProblem.tasks must be in a topological order")
        for k, (u, v) in enumerate(self.ends):
            self.preds[v].append((u, k))
            self.succs[u].append((v, k))
        # couples: neighbours u -> v joined by nothing else (v's only predecessor is u, or u's
        # only successor is v), such as the prefill and decode of one call; they move together
        self.couples = [
            (u, v)
            for u, v in dict.fromkeys(self.ends)
            if all(w == v for w, _ in self.succs[u]) or all(w == u for w, _ in self.preds[v])
        ]
        self._seconds: list[dict[int, float]] = [{} for _ in problem.edges]  # p·P+q -> s
        self._dollars: list[dict[int, float]] = [{} for _ in problem.edges]  # p·P+q -> $
        self.pool = [pool_index[start[t]] for t in self.tasks]
        self.lat = [problem.options[t][start[t]].latency_s for t in self.tasks]
        self.cost = [problem.options[t][start[t]].cost_usd for t in self.tasks]
        self.est = [0.0] * len(self.tasks)
        self.tail = [0.0] * len(self.tasks)
        self.look_aheads = max(1, LOOK_AHEAD_WORK // len(self.tasks))
        for v in range(len(self.tasks)):
            self.est[v] = self._start(v, self.pool[v])
        self._recompute_tails()

    def assignment(self) -> dict[str, str]:
        return {t: self.pool_names[p] for t, p in zip(self.tasks, self.pool, strict=True)}

    def total_cost(self) -> float:
        pool, dollars = self.pool, self.dollars
        return sum(self.cost) + sum(
            dollars(e, pool[u], pool[v]) for e, (u, v) in enumerate(self.ends)
        )

    def snapshot(self) -> tuple[list, ...]:
        return self.pool[:], self.lat[:], self.cost[:], self.est[:], self.tail[:]

    def restore(self, snapshot: tuple[list, ...]) -> None:
        self.pool, self.lat, self.cost, self.est, self.tail = (list(s) for s in snapshot)

    # --- transfers, computed once per edge and pool pair -------------------------------------

    def seconds(self, edge: int, p: int, q: int) -> float:
        key = p * self.n_pools + q
        cache = self._seconds[edge]
        if key not in cache:
            names = self.pool_names
            cache[key] = self.problem.edge_seconds(self.problem.edges[edge], names[p], names[q])
        return cache[key]

    def dollars(self, edge: int, p: int, q: int) -> float:
        key = p * self.n_pools + q
        cache = self._dollars[edge]
        if key not in cache:
            names = self.pool_names
            cache[key] = self.problem.edge_cost_usd(self.problem.edges[edge], names[p], names[q])
        return cache[key]

    # --- longest paths -----------------------------------------------------------------------

    def _start(self, v: int, q: int) -> float:
        """v's earliest start were it on pool q (its predecessors' places fixed)."""
        est, lat, pool, seconds = self.est, self.lat, self.pool, self.seconds
        start = 0.0
        for u, e in self.preds[v]:
            ready = est[u] + lat[u] + seconds(e, pool[u], q)
            if ready > start:
                start = ready
        return start

    def _rest(self, v: int, q: int) -> float:
        """The longest path after v ends were v on pool q (its successors' places fixed)."""
        tail, pool, seconds = self.tail, self.pool, self.seconds
        rest = 0.0
        for w, e in self.succs[v]:
            after = seconds(e, q, pool[w]) + tail[w]
            if after > rest:
                rest = after
        return rest

    def finish_early(self) -> _Placement:
        """Each task, in topological order, on the option that finishes it first given where
        its inputs are (earliest-finish-time list scheduling; pools are not contended here)."""
        pool, est = self.pool, self.est
        for v in range(len(self.tasks)):
            finish, pool[v], self.lat[v], self.cost[v] = min(
                (self._start(v, q) + latency, q, latency, cost)
                for q, latency, cost in self.options[v]
            )
            est[v] = finish - self.lat[v]
        self._recompute_tails()
        return self

    def _recompute_tails(self) -> None:
        for u in reversed(range(len(self.tasks))):
            self.tail[u] = self.lat[u] + self._rest(u, self.pool[u])

    def makespan(self) -> float:
        return max(map(operator.add, self.est, self.tail))

    def critical(self, makespan: float) -> list[int]:
        floor = makespan * (1 - TIE)
        return [v for v, path in enumerate(map(operator.add, self.est, self.tail)) if path >= floor]

    # --- moves -------------------------------------------------------------------------------

    def dollars_around(self, v: int) -> float:
        """What the transfers on v's edges cost now."""
        pool, dollars = self.pool, self.dollars
        into = sum(dollars(e, pool[u], pool[v]) for u, e in self.preds[v])
        return into + sum(dollars(e, pool[v], pool[w]) for w, e in self.succs[v])

    def delta_cost(self, move: Move) -> float:
        """$ per request the move saves (negative) or adds, transfers on touched edges included."""
        pool, dollars = self.pool, self.dollars
        delta = 0.0
        for v, (q, _, cost) in move.items():
            delta += cost - self.cost[v]
            for u, e in self.preds[v]:
                if u not in move:  # an edge inside the move is counted from its source
                    delta += dollars(e, pool[u], q) - dollars(e, pool[u], pool[v])
            for w, e in self.succs[v]:
                q_w = move[w][0] if w in move else pool[w]
                delta += dollars(e, q, q_w) - dollars(e, pool[v], pool[w])
        return delta

    def longest_after(self, move: Move) -> float:
        """The longest path through the moved tasks once moved, every other place fixed: the
        paths that avoid them do not change, so this decides the SLA. Exact in O(degree), for
        one task or a couple (see `couples`), whose new places are filled in for the purpose."""
        if len(move) == 1:
            [(v, (q, latency, _))] = move.items()
            return self._start(v, q) + latency + self._rest(v, q)
        u, v = sorted(move)  # a couple u -> v: nothing else joins them
        (q_u, lat_u, _), (q_v, lat_v, _) = move[u], move[v]
        pool, lat, est, tail = self.pool, self.lat, self.est, self.tail
        saved = pool[u], lat[u], est[u], pool[v], lat[v], tail[v]
        pool[u], lat[u], pool[v], lat[v] = q_u, lat_u, q_v, lat_v
        est[u] = self._start(u, q_u)  # u's predecessors do not depend on the couple
        tail[v] = lat_v + self._rest(v, q_v)  # nor do v's successors
        longest = max(est[u] + lat_u + self._rest(u, q_u), self._start(v, q_v) + tail[v])
        pool[u], lat[u], est[u], pool[v], lat[v], tail[v] = saved
        return longest

    def apply(self, move: Move) -> None:
        """Makes the move and repairs est and tail where they changed."""
        for v, (q, latency, cost) in move.items():
            self.pool[v], self.lat[v], self.cost[v] = q, latency, cost
        est, tail, pool, lat = self.est, self.tail, self.pool, self.lat
        queue = sorted(move)  # forward, in topological order: the moved tasks and their descendants
        queued = set(queue)
        while queue:
            v = heapq.heappop(queue)
            start = self._start(v, pool[v])
            if start != est[v] or v in move:
                est[v] = start
                for w, _ in self.succs[v]:
                    if w not in queued:
                        queued.add(w)
                        heapq.heappush(queue, w)
        queue = sorted(-v for v in move)  # backward: the moved tasks and their ancestors
        queued = set(move)
        while queue:
            u = -heapq.heappop(queue)
            after = lat[u] + self._rest(u, pool[u])
            if after != tail[u] or u in move:
                tail[u] = after
                for v, _ in self.preds[u]:
                    if v not in queued:
                        queued.add(v)
                        heapq.heappush(queue, -v)

    def _pairs(self) -> Iterable[tuple[int, int, list[Move]]]:
        """Couples on different pools, each with its moves onto one pool both can run on."""
        for u, v in self.couples:
            if self.pool[u] != self.pool[v]:
                on_v = {option[0]: option for option in self.options[v]}
                yield u, v, [{u: o, v: on_v[o[0]]} for o in self.options[u] if o[0] in on_v]

    # --- the two phases ----------------------------------------------------------------------

    def repair(
        self, sla: float | None, held: frozenset[int] = frozenset(), look_ahead: bool = True
    ) -> bool:
        """Upgrades on the critical path, most latency per dollar first, until the SLA holds.

        Gains count only up to the SLA's excess, so a cheap small upgrade beats a dear big one
        when the small one suffices. Each round ranks every critical task's best upgrade and
        makes them in that order, skipping neighbours of tasks already moved, until their gains
        add up to the excess: far fewer rounds when hundreds of tasks need upgrading, and the
        same choices when one does. When no single task's move shortens the critical path, a
        critical couple moves onto one pool, so the transfer between them vanishes; when that
        fails too, `_look_ahead`. Tasks in `held` stay where they are. False when nothing
        shortens the path any more.
        """
        for _ in range(len(self.tasks) * self.n_pools + 1):
            makespan = self.makespan()
            if within_sla(makespan, sla):
                return True
            excess = makespan - sla
            critical = [v for v in self.critical(makespan) if v not in held]
            singles = (self._could_shorten(v, makespan) for v in critical)
            ranked = self._ranked_upgrades(makespan, excess, singles)
            if not ranked:
                on_path = set(critical)
                pairs = (moves for u, v, moves in self._pairs() if u in on_path and v in on_path)
                ranked = self._ranked_upgrades(makespan, excess, pairs)[:1]
            if ranked:
                moved: set[int] = set()
                for gain, move in ranked:
                    if excess <= 0:
                        break
                    if moved.isdisjoint(self._neighbourhood(move)):
                        self.apply(move)
                        moved |= move.keys()
                        excess -= gain
                continue
            if not (look_ahead and self._look_ahead(sla, makespan, critical, held)):
                return False
        return within_sla(self.makespan(), sla)

    def _look_ahead(
        self, sla: float, makespan: float, critical: list[int], held: frozenset[int]
    ) -> bool:
        """Stuck: a critical task to another option although its paths get longer, then
        `repair` around it (the task held); kept if the makespan shrinks. Reaches group moves (a
        task and its neighbours onto one pool) that no single move does. Each placement has
        LOOK_AHEAD_WORK / tasks tries in all."""
        for v in critical:
            for option in self.options[v]:
                if option[0] == self.pool[v]:
                    continue
                if self.look_aheads <= 0:
                    return False
                self.look_aheads -= 1
                snapshot = self.snapshot()
                self.apply({v: option})
                self.repair(sla, held | {v}, look_ahead=False)
                if self.makespan() < makespan * (1 - TIE):
                    return True
                self.restore(snapshot)
        return False

    def _could_shorten(self, v: int, makespan: float) -> list[Move]:
        """v's moves that might shorten the paths through it: not those whose latency, with
        every transfer around v taken as free, already fills the makespan."""
        est, lat, tail = self.est, self.lat, self.tail
        ready = max((est[u] + lat[u] for u, _ in self.preds[v]), default=0.0)
        after = max((tail[w] for w, _ in self.succs[v]), default=0.0)
        ceiling = makespan * (1 - TIE) - ready - after
        return [{v: option} for option in self.options[v] if option[1] < ceiling]

    def _ranked_upgrades(
        self, makespan: float, excess: float, candidates: Iterable[list[Move]]
    ) -> list[tuple[float, Move]]:
        """The best upgrade of each candidate group (one task's moves, or one couple's) with
        its gain, best first: free shortenings (the biggest), then the most latency, counted
        up to `excess`, per dollar."""
        ranked = []
        for moves in candidates:
            best, best_key = None, (-1, 0.0)
            for move in moves:
                if all(self.pool[v] == q for v, (q, _, _) in move.items()):
                    continue
                gain = makespan - self.longest_after(move)
                if gain <= makespan * TIE:
                    continue
                extra = self.delta_cost(move)
                key = (1, gain) if extra <= 0 else (0, min(gain, excess) / extra)
                if key > best_key:
                    best, best_key = (gain, move), key
            if best is not None:
                ranked.append((best_key, best))
        ranked.sort(key=operator.itemgetter(0), reverse=True)
        return [best for _, best in ranked]

    def _neighbourhood(self, move: Move) -> set[int]:
        """The moved tasks and their neighbours: whose transfers the move changes."""
        near = set(move)
        for v in move:
            near.update(u for u, _ in self.preds[v])
            near.update(w for w, _ in self.succs[v])
        return near

    def descend(self, sla: float | None, exchanges: int = 0) -> None:
        """Cheaper options for tasks with slack, alone, then as couples, then (up to
        `exchanges` tries) by exchange, while the SLA holds; until a round finds nothing."""
        for _ in range(MAX_ROUNDS):
            improved = self._sweep(sla)
            for u, v, moves in self._pairs():
                floor = (
                    self.cost[u] + self.cost[v] + self.dollars_around(u) + self.dollars_around(v)
                )
                saving = [
                    (delta, move)
                    for move in moves
                    if move[u][2] + move[v][2] < floor and (delta := self.delta_cost(move)) < 0
                ]
                for _, move in sorted(saving, key=operator.itemgetter(0)):
                    if within_sla(self.longest_after(move), sla):
                        self.apply(move)
                        improved = True
                        break
            if not improved and sla is not None and exchanges > 0:
                improved, exchanges = self._exchange(sla, exchanges)
            if not improved:
                return

    def _exchange(self, sla: float, tries: int) -> tuple[bool, int]:
        """A task to a cheaper option even though the SLA then breaks, then `repair` (the task
        held): kept if the whole is cheaper. Moves slack from one task to another, which no
        single move can. Biggest potential savings first; returns the tries left."""
        potential = sorted(
            ((self.cost[v] - self.options[v][0][2], v) for v in range(len(self.tasks))),
            reverse=True,
        )
        improved = False
        for saving, v in potential:
            for option in self.options[v] if saving > 0 else ():
                if option[2] >= self.cost[v] or tries <= 0:
                    break
                tries -= 1
                before, snapshot = self.total_cost(), self.snapshot()
                self.apply({v: option})
                if self.repair(sla, held=frozenset([v])):
                    self._sweep(sla)  # the repair may free slack elsewhere (a shared upgrade)
                if within_sla(self.makespan(), sla) and self.total_cost() < before * (1 - TIE):
                    improved = True
                    break
                self.restore(snapshot)
        return improved, tries

    def _sweep(self, sla: float | None) -> bool:
        """Each task, in topological order, to its cheapest option that keeps the SLA.

        No longest-path update per move: reaching v, its predecessors are final (their est is
        recomputed on the way) and nothing after v has moved (its successors' tails hold).
        """
        improved = False
        pool, est = self.pool, self.est
        for v in range(len(self.tasks)):
            est[v] = self._start(v, pool[v])
            best, best_delta = None, 0.0
            floor = self.cost[v] + self.dollars_around(v)  # no move saves more than this
            for option in self.options[v]:  # cheapest first
                if option[2] - floor >= best_delta:
                    break
                if option[0] == pool[v]:
                    continue
                move = {v: option}
                delta = self.delta_cost(move)
                if delta < best_delta and within_sla(self.longest_after(move), sla):
                    best, best_delta = option, delta
            if best is not None:
                pool[v], self.lat[v], self.cost[v] = best
                est[v] = self._start(v, pool[v])
                improved = True
        self._recompute_tails()
        return improved
