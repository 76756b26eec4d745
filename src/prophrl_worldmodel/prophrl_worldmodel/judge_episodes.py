"""The reward judge per episode, as RL and the imagined evaluation use it.

RL and `prophrl eval --in-imagination` do not judge single clips: after each chunk of actions they score the
clip so far, and an episode is a success either when any of those scores reaches the threshold (JUDGING
"every_chunk", the RL collector's rule: the first success ends the rollout) or when the score of the whole
clip after the last chunk does ("final"). Under "every_chunk" a judge's false positive has one chance per chunk;
its figures per episode are those of the highest score over the chunks. The clip metrics of judge_metrics count
every prefix of an episode, most of them easy negatives, and so miss what these rules make of a judge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prophrl_worldmodel.judge_metrics import operating_point

JUDGING = ("every_chunk", "final")


def chunk_ends(length: int, frames_per_chunk: int) -> list[int]:
    """The lengths of the clips so far after each chunk of a video of `length` frames whose first frame is the
    start: 1 + frames_per_chunk, 1 + 2 x frames_per_chunk, ..., the last one the whole video."""
    if frames_per_chunk < 1:
        raise ValueError(f"frames per chunk must be >= 1, got {frames_per_chunk}")
    if length < 2:
        raise ValueError(f"a judged episode needs a start frame and at least one more, got {length} frame(s)")
    return list(range(1 + frames_per_chunk, length, frames_per_chunk)) + [length]


def episode_scores(judge, videos: Sequence[np.ndarray], instructions: Sequence[str],
                   frames_per_chunk: int) -> list[np.ndarray]:
    """For each video, the judge's success probability of the clip so far after each of its chunks."""
    clips, owners = [], []
    for i, video in enumerate(videos):
        for end in chunk_ends(len(video), frames_per_chunk):
            clips.append(video[:end])
            owners.append(i)
    probs = judge.score(clips, [instructions[i] for i in owners]).numpy().astype(np.float64)
    owners = np.asarray(owners)
    return [probs[owners == i] for i in range(len(videos))]


def episode_statistic(scores: np.ndarray, judging: str) -> float:
    """The score an episode is decided on: the highest over its chunks ("every_chunk") or its last ("final")."""
    if judging not in JUDGING:
        raise ValueError(f"judging must be one of {', '.join(JUDGING)}, got {judging!r}")
    return float(np.max(scores) if judging == "every_chunk" else scores[-1])


def episode_metrics(scores: Sequence[np.ndarray], successes: Sequence[bool], threshold: float,
                    target_recall: float = 0.95) -> dict[str, dict]:
    """Per judging rule: precision / recall / ... of the episodes' decisions at `threshold`, the AUC of the score
    they are decided on, and the best precision any threshold keeping recall >= target_recall reaches
    (judge_metrics.operating_point), with the numbers of episodes."""
    labels = np.asarray(successes, np.int64)
    out = {}
    for judging in JUDGING:
        statistic = [episode_statistic(s, judging) for s in scores]
        out[judging] = {**operating_point(statistic, labels, threshold, target_recall),
                        "episodes": int(len(labels)), "successes": int(labels.sum())}
    return out
