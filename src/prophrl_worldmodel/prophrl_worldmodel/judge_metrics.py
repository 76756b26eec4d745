"""How a reward judge is measured: precision / recall at a threshold, ROC AUC, the threshold that keeps a
target recall, a judge's operating point, and the figures of a judge on a clip set."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from prophrl_common.config_io import ConfigError
from prophrl_worldmodel.judge_clips import ClipSet


@dataclasses.dataclass(frozen=True)
class BinaryMetrics:
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    precision: float          # tp / (tp + fp); 0 when nothing is predicted positive
    recall: float             # tp / (tp + fn); 0 when there are no positives
    accuracy: float
    balanced_accuracy: float  # mean of recall and specificity (a class that is absent counts 0)
    f1: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def precision_recall(probs, labels, threshold: float = 0.5) -> BinaryMetrics:
    """Confusion counts and rates of `probs >= threshold` against 0/1 `labels`."""
    p = np.asarray(torch.as_tensor(probs).detach().cpu().numpy() if isinstance(probs, torch.Tensor) else probs,
                   np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities but {y.size} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    pred = p >= threshold
    y = y.astype(bool)
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    tn, fn = int((~pred & ~y).sum()), int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    accuracy = (tp + tn) / y.size if y.size else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BinaryMetrics(float(threshold), tp, fp, tn, fn, precision, recall, accuracy, (recall + specificity) / 2, f1)


def roc_auc(probs, labels) -> float:
    """Area under the ROC curve (probability that a positive outranks a negative; ties count half)."""
    p = np.asarray(probs, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    pos, neg = p[y], p[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def recall_threshold(probs, labels, target_recall: float) -> float:
    """A threshold with recall >= target_recall on (probs, labels) and the best precision among those.

    The highest such threshold is the k-th highest positive score (k = ceil(target_recall * positives));
    every threshold down to the next lower score of a negative gives the same recall and precision,
    so the midpoint (in logit space) of that gap is returned: the same validation figures with the
    widest margin on both sides, which matters when the validation split is small.
    """
    p = np.asarray(probs, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    pos = np.sort(p[y])[::-1]
    if not len(pos):
        raise ConfigError("cannot choose a threshold: no positive clips in the validation split")
    k = max(1, math.ceil(target_recall * len(pos) - 1e-9))
    upper = float(pos[k - 1])
    below = p[~y][p[~y] < upper]
    eps = 1e-6
    logit = lambda q: math.log(min(max(q, eps), 1 - eps) / (1 - min(max(q, eps), 1 - eps)))  # noqa: E731
    lower_logit = logit(float(below.max())) if len(below) else logit(upper) - 4.0
    threshold = 1.0 / (1.0 + math.exp(-(logit(upper) + lower_logit) / 2))
    return float(min(threshold, upper))


def operating_point(probs, labels, threshold: float, target_recall: float = 0.95) -> dict:
    """A judge's figures on labelled clips: precision / recall / ... at `threshold`, AUC, and the best precision
    that any threshold keeping recall >= `target_recall` reaches on these clips (picked on them: an upper
    bound of what a calibrated threshold could give), as "best_precision_at_recall"."""
    p = np.asarray(probs, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    best = (precision_recall(p, y, recall_threshold(p, y, target_recall)).precision if y.any() else float("nan"))
    return {**precision_recall(p, y, threshold).as_dict(), "auc": roc_auc(p, y), "best_precision_at_recall": best,
            "target_recall": float(target_recall)}


def evaluate_judge(judge, clip_set: ClipSet, threshold: float | None = None) -> dict:
    """Metrics of a judge on labelled clips, overall and per source (real / imagined)."""
    probs = judge.score(clip_set.clips, clip_set.instructions).numpy()
    threshold = judge.threshold if threshold is None else threshold
    out = {"all": {**precision_recall(probs, clip_set.labels, threshold).as_dict(),
                   "auc": roc_auc(probs, clip_set.labels), **clip_set.counts()}}
    for source in sorted(set(clip_set.sources)):
        idx = [i for i, s in enumerate(clip_set.sources) if s == source]
        sub = clip_set.subset(idx)
        out[source] = {**precision_recall(probs[idx], sub.labels, threshold).as_dict(),
                       "auc": roc_auc(probs[idx], sub.labels), **sub.counts()}
    return out
