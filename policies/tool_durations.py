"""What KV retention policies learn from programs: how long each tool keeps a program away, and
how many turns programs take.

A tool's duration is observed as the time from a turn's end (its lease starting) to the
program's next turn arriving. Before enough has been seen, an exponential prior answers
(Continuum's cold start: Exp(1 s) until 100 samples), then the pooled empirical distribution of
all tools, then the tool's own once it has enough samples of its own.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

PRIOR_MEAN_SECONDS = 1.0
POOLED_AFTER = 100  # samples of all tools before the empirical distribution replaces the prior
OWN_AFTER = 20  # samples of one tool before its own distribution is used
KEEP = 2000  # samples kept per tool (the most recent)


@dataclass
class _Samples:
    sorted: list[float] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        bisect.insort(self.sorted, value)
        self.recent.append(value)
        if len(self.recent) > KEEP:
            old = self.recent.pop(0)
            del self.sorted[bisect.bisect_left(self.sorted, old)]

    def cdf(self, t: float) -> float:
        return bisect.bisect_right(self.sorted, t) / len(self.sorted)


class ToolDurations:
    """Observed tool durations and the distribution predicted from them."""

    def __init__(
        self,
        prior_mean: float = PRIOR_MEAN_SECONDS,
        pooled_after: int = POOLED_AFTER,
        own_after: int = OWN_AFTER,
    ):
        self.prior_mean, self.pooled_after, self.own_after = prior_mean, pooled_after, own_after
        self.by_tool: dict[str, _Samples] = {}
        self.pooled = _Samples()
        self.away: dict[str, tuple[str, float]] = {}  # program -> (tool, turn end)

    # -- observing ------------------------------------------------------------------------

    def turn_ended(self, program: str, tool: str | None, now: float) -> None:
        self.away[program] = (tool or "", now)

    def turn_arrived(self, program: str, now: float) -> float | None:
        """Record the duration of the tool the program ran; None if it was not seen leaving."""
        left = self.away.pop(program, None)
        if left is None:
            return None
        tool, ended = left
        duration = max(0.0, now - ended)
        self.by_tool.setdefault(tool, _Samples()).add(duration)
        self.pooled.add(duration)
        return duration

    def forget(self, program: str) -> None:
        self.away.pop(program, None)

    # -- predicting -----------------------------------------------------------------------

    def _samples(self, tool: str | None) -> _Samples | None:
        """The observations predictions come from: the tool's own once it has enough, else all
        tools' once they have enough, else none (the exponential prior)."""
        own = self.by_tool.get(tool or "")
        if own is not None and len(own.sorted) >= self.own_after:
            return own
        if len(self.pooled.sorted) >= self.pooled_after:
            return self.pooled
        return None

    def cdf(self, tool: str | None, t: float) -> float:
        """P(the tool has returned within t seconds)."""
        if t <= 0:
            return 0.0
        samples = self._samples(tool)
        if samples is None:
            return 1.0 - math.exp(-t / self.prior_mean)
        return samples.cdf(t)

    def hazard(self, tool: str | None, age: float, window: float) -> float:
        """P(the tool returns within the next `window` seconds | not returned after `age`)."""
        if self._samples(tool) is None:  # the exponential prior is memoryless
            return 1.0 - math.exp(-window / self.prior_mean)
        alive = 1.0 - self.cdf(tool, age)
        if alive <= 1e-9:
            # it outlived every observation: tool durations are heavy-tailed, and a heavy
            # tail's remaining life grows with the time already waited, so take it to be that
            return 1.0 - math.exp(-window / max(age, self.mean(tool)))
        return (self.cdf(tool, age + window) - self.cdf(tool, age)) / alive

    def mean(self, tool: str | None) -> float:
        samples = self._samples(tool)
        return self.prior_mean if samples is None else sum(samples.sorted) / len(samples.sorted)

    def quantiles(self, tool: str | None) -> list[float]:
        """Candidate holding times: every observed duration of the distribution in use."""
        samples = self._samples(tool)
        if samples is None:
            return [self.prior_mean * -math.log(1 - q / 20) for q in range(1, 20)]
        return list(samples.sorted)


class TurnStats:
    """How many turns finished programs took: eta = -Corr(k, N - k) over their turns, which is
    how the turn number enters Continuum's benefit (a program early in a long run is worth more)."""

    def __init__(self, keep: int = 1000):
        self.turns: list[int] = []
        self.keep = keep
        self._eta: float | None = None  # computed once per change: policies ask every step

    def program_finished(self, turns: int) -> None:
        if turns >= 1:
            self.turns.append(turns)
            del self.turns[: -self.keep]
            self._eta = None

    def eta(self) -> float:
        if self._eta is None:
            self._eta = self._correlation()
        return self._eta

    def _correlation(self) -> float:
        pairs = [(k, n - k) for n in self.turns for k in range(1, n + 1)]
        if len(pairs) < 2:
            return 1.0
        ks = [k for k, _ in pairs]
        rest = [r for _, r in pairs]
        mk, mr = sum(ks) / len(ks), sum(rest) / len(rest)
        cov = sum((a - mk) * (b - mr) for a, b in pairs)
        sk = math.sqrt(sum((a - mk) ** 2 for a in ks))
        sr = math.sqrt(sum((b - mr) ** 2 for b in rest))
        if sk == 0 or sr == 0:
            return 1.0
        return max(0.0, -cov / (sk * sr))

    def expected_remaining(self, turn: int) -> float:
        """Mean turns still to come for a program that has finished `turn` turns."""
        longer = [n - turn for n in self.turns if n > turn]
        if not self.turns:
            return 1.0
        return sum(longer) / len(self.turns) if longer else 0.0
