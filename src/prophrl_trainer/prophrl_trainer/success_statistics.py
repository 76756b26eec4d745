"""How sure a measured success rate is: intervals for rates and for the gain of one policy over another.

Success in the sim is measured on a fixed list of held-out initial states (one episode per state and
checkpoint / sampling seed), so

- a rate gets the Wilson score interval of a binomial proportion over all its episodes
  (:func:`wilson_interval`; unlike the normal approximation it stays inside [0, 1] and does not collapse
  to a point at 0 % or 100 % on few states);
- the gain of a policy over a baseline evaluated on the *same* states is paired by state: each state's
  success of either policy is averaged over its seeds, and :func:`paired_gain` gives the mean of the
  per-state differences with a normal interval of that mean (mean +- z * sd / sqrt(n)). Pairing removes
  the state-to-state difficulty that the two policies share, so it is tighter than comparing two
  independent intervals, and it is honest about n: on 20 states a 10-point gain is usually not resolved.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

Z_95 = 1.959963984540054


@dataclasses.dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int             # episodes (a rate) or paired states (a gain)

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def percent(self, signed: bool = False) -> str:
        """'23.3 % [13.1, 37.7]' (signed: '+10.0 pts [-2.1, +22.1]'; a gain of 0 with no spread, both policies
        succeeding and failing on exactly the same states: '+0.0 pts (the same outcome on every state)')."""
        if signed:
            if self.estimate == self.low == self.high == 0.0:
                return "+0.0 pts (the same outcome on every state)"
            return f"{100 * self.estimate:+.1f} pts [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"
        return f"{100 * self.estimate:.1f} % [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Interval:
    """Wilson score interval of successes / trials (trials 0: the uninformative [0, 1])."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Interval(math.nan, 0.0, 1.0, 0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), trials)


def per_state_success(outcomes: Sequence[Sequence[bool]]) -> list[float]:
    """Each state's success rate over several runs (training / sampling seeds) of the same state list:
    outcomes[run][state] -> [state]."""
    if not outcomes or any(len(run) != len(outcomes[0]) for run in outcomes):
        raise ValueError("every run must cover the same states")
    return [sum(bool(run[i]) for run in outcomes) / len(outcomes) for i in range(len(outcomes[0]))]


def paired_gain(baseline: Sequence[float], candidate: Sequence[float], z: float = Z_95) -> Interval:
    """Mean per-state gain candidate - baseline (per-state success rates on the same states, in order, at
    least 2) and its normal interval."""
    if len(baseline) != len(candidate):
        raise ValueError(f"paired gain needs the same states: {len(baseline)} vs {len(candidate)}")
    n = len(baseline)
    if n < 2:
        raise ValueError("a paired gain needs at least 2 states")
    differences = [c - b for b, c in zip(baseline, candidate)]
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = z * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)
