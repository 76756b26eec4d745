"""Several reward judges scored as one, so that RL is rewarded only where they agree.

RL maximises whatever the judge rewards, so one judge's blind spots become the policy's target: the
policy learns the clips that fool it. Judges trained apart (different seeds, or different data) err on
different clips, and where they disagree a clip lies outside what they learned together. The ensemble's
score of a clip is the members' mean success probability minus ``disagreement`` times their standard
deviation (population, so two judges at 1 and 0 give 0.5 - 0.5 * disagreement), clipped to [0, 1]; a clip
is a success when that score reaches the ensemble's threshold, the mean of the members' thresholds. One
judge is returned as itself by `load_judges`: its own probability and threshold.

    prophrl judge train --data D --seed 0 --out judges/j0   (and --seed 1, --seed 2, ...)
    prophrl judge eval --judge judges/j0 judges/j1 judges/j2 --data D --imagined-from PROPHET
    prophrl train --judge judges/j0 judges/j1 judges/j2 ...  (RLConfig.judge_disagreement)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prophrl_common.config_io import ConfigError

if TYPE_CHECKING:
    import torch

# Weight of the members' standard deviation in the ensemble's score (RLConfig.judge_disagreement's default).
DEFAULT_DISAGREEMENT = 1.0


class JudgeEnsemble:
    """Judges (anything with score(clips, instructions) and threshold) scored as one judge."""

    def __init__(self, judges: Sequence, disagreement: float = DEFAULT_DISAGREEMENT):
        if len(judges) < 2:
            raise ConfigError(f"a judge ensemble needs at least 2 judges, got {len(judges)}")
        if not (math.isfinite(disagreement) and disagreement >= 0):
            raise ConfigError(f"judge disagreement weight must be finite and >= 0, got {disagreement}")
        self.judges = list(judges)
        self.disagreement = float(disagreement)
        self.threshold = sum(float(j.threshold) for j in self.judges) / len(self.judges)

    def member_scores(self, clips, instructions) -> torch.Tensor:
        """(judges, clips) success probabilities of every member."""
        import torch

        return torch.stack([torch.as_tensor(judge.score(clips, instructions)).detach().float().cpu().reshape(-1)
                            for judge in self.judges])

    def score(self, clips, instructions) -> torch.Tensor:
        probs = self.member_scores(clips, instructions)
        return (probs.mean(0) - self.disagreement * probs.std(0, correction=0)).clamp(0.0, 1.0)

    def describe(self) -> str:
        return f"ensemble of {len(self.judges)} judges (disagreement weight {self.disagreement:g})"


def load_judges(paths: Sequence[str | Path], backend: str = "auto", device: str | torch.device = "cpu",
                disagreement: float = DEFAULT_DISAGREEMENT):
    """One judge from one path (modeling_judge.load_judge), a JudgeEnsemble from several."""
    from prophrl_worldmodel.modeling_judge import load_judge

    paths = [str(p) for p in paths]
    if not paths:
        raise ConfigError("no judge checkpoint given")
    if len(set(paths)) != len(paths):
        raise ConfigError(f"the same judge is given twice: {paths}")
    judges = [load_judge(path, backend, device) for path in paths]
    return judges[0] if len(judges) == 1 else JudgeEnsemble(judges, disagreement)
