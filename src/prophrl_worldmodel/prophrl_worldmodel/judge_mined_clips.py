"""Clips of RL's own rollouts, labelled by the sim's success: the reward judge's hard negatives.

RL drives its policy towards the clips its judge scores highest, so the judge's false positives on RL's rollouts
are the clips it most needs to learn from. `prophrl train --sim ROBOT/TASK --judge J --mine-clips --out RUN` writes
to RUN/mined_clips, after every update, the clip each rollout was judged on together with the sim's own success
where it ended (with `--world-model P --replay-in-sim ROBOT/TASK` instead of `--sim`: Prophet's imagined clip, and
the success of its actions executed in the sim); `prophrl judge train --mined RUN/mined_clips` adds them to the judge's training clips (source "rl").

One file per update (and rank), update_000012.safetensors (rank r > 0: update_000012_rank<r>.safetensors),
replaced whole when a resumed run repeats that update:
- frames uint8 (N, T, S, S, 3): each clip reduced to S = MINED_FRAME_SIZE px (prophrl_common.frames) and to at
  most MINED_FRAMES frames spread evenly over it, first and last kept (a judge reads num_frames of them); shorter
  clips padded at the end with their last frame;
- lengths int64 (N,): each clip's own frame count;
- labels int64 (N,): 1 when the sim's task check had passed by the end of the rollout;
- rewards float32 (N,): the reward the judge gave the rollout;
- starts int64 (N,): the rollout's start state within the update (rollouts of one start stay on one side of the
  judge's train / validation split);
metadata: "format" (FORMAT), "update" and "instructions" (a JSON list, one per clip).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prophrl_common.atomic_io import atomic_file
from prophrl_common.config_io import ConfigError
from prophrl_common.frames import resize_frames
from prophrl_worldmodel.judge_clips import ClipSet
from prophrl_worldmodel.modeling_judge import uniform_indices

FORMAT = "prophrl mined rollout clips 1"
MINED_FRAME_SIZE = 64      # the 64 px judges' input; a judge of another size resizes them as any clip
MINED_FRAMES = 24          # 3x a judge's 8 frames, so its training still jitters which ones it reads
SOURCE = "rl"              # ClipSet source of the mined clips
_ARRAYS = ("frames", "lengths", "labels", "rewards", "starts")


def mined_clip_path(directory: str | Path, update: int, rank: int = 0) -> Path:
    suffix = f"_rank{rank}" if rank else ""
    return Path(directory) / f"update_{update:06d}{suffix}.safetensors"


def reduce_clip(clip: np.ndarray, frame_size: int = MINED_FRAME_SIZE, max_frames: int = MINED_FRAMES) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (min(T, max_frames), frame_size, frame_size, 3): evenly spread frames, first and last
    kept, each reduced by area averaging."""
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3 or not len(clip):
        raise ValueError(f"a clip must be (T, H, W, 3) with T >= 1, got shape {clip.shape}")
    if len(clip) > max_frames:
        clip = clip[uniform_indices(len(clip), max_frames)]
    return resize_frames(np.ascontiguousarray(clip, dtype=np.uint8), frame_size)


def save_mined_clips(path: str | Path, clips: Sequence[np.ndarray], labels, rewards, instructions: Sequence[str],
                     starts, update: int) -> Path:
    """Write one update's judged rollout clips (see the module docstring) to `path`, atomically; returns it."""
    from safetensors.numpy import save_file

    n = len(clips)
    labels = np.asarray(labels, np.int64).reshape(-1)
    rewards = np.asarray(rewards, np.float32).reshape(-1)
    starts = np.asarray(starts, np.int64).reshape(-1)
    if not n or not (len(labels) == len(rewards) == len(starts) == len(instructions) == n):
        raise ValueError(f"{n} clips, {len(labels)} labels, {len(rewards)} rewards, {len(starts)} starts and "
                         f"{len(instructions)} instructions")
    if not np.isfinite(rewards).all():
        raise ValueError("mined clips: a reward is NaN/inf")
    reduced = [reduce_clip(clip) for clip in clips]
    lengths = np.array([len(clip) for clip in reduced], np.int64)
    frames = np.stack([np.concatenate([clip, np.repeat(clip[-1:], lengths.max() - len(clip), 0)])
                       for clip in reduced])
    with atomic_file(path) as tmp:
        save_file({"frames": frames, "lengths": lengths, "labels": labels, "rewards": rewards, "starts": starts},
                  str(tmp), metadata={"format": FORMAT, "update": str(int(update)),
                                      "instructions": json.dumps(list(instructions))})
    return Path(path)


def _read(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ConfigError(f"{path}: not a file of mined rollout clips (format {meta.get('format')!r}, "
                                  f"expected {FORMAT!r})")
            missing = [key for key in _ARRAYS if key not in f.keys()]
            if missing:
                raise ConfigError(f"{path}: mined rollout clips without {', '.join(missing)}")
            arrays = {key: f.get_tensor(key) for key in _ARRAYS}
            instructions = json.loads(meta.get("instructions", "null"))
    except ConfigError:
        raise
    except Exception as exc:  # safetensors and json raise their own error types for corrupt files
        raise ConfigError(f"{path}: cannot read mined rollout clips: {exc}") from exc
    frames = arrays["frames"]
    n = len(frames)
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3 or not isinstance(instructions, list) \
            or any(arrays[key].shape != (n,) for key in _ARRAYS[1:]) or len(instructions) != n \
            or not ((arrays["lengths"] >= 1) & (arrays["lengths"] <= frames.shape[1])).all() \
            or not np.isin(arrays["labels"], (0, 1)).all():
        raise ConfigError(f"{path}: malformed mined rollout clips (frames {frames.shape} {frames.dtype})")
    return arrays, [str(t) for t in instructions]


def load_mined_clips(directories: str | Path | Sequence[str | Path]) -> ClipSet:
    """Every mined clip in `directories` (prophrl train --mine-clips outputs), labelled by the sim's success, grouped
    by update and start state, with source "rl"."""
    if isinstance(directories, (str, Path)):
        directories = [directories]
    clips, labels, instructions, groups = [], [], [], []
    for directory in map(Path, directories):
        files = sorted(directory.glob("update_*.safetensors")) if directory.is_dir() else []
        if not files:
            raise ConfigError(f"{directory}: no mined rollout clips (update_*.safetensors, written by "
                              "`prophrl train --sim ROBOT/TASK --judge J --mine-clips --out RUN` into RUN/mined_clips)")
        for path in files:
            arrays, texts = _read(path)
            for i, length in enumerate(arrays["lengths"]):
                clips.append(arrays["frames"][i, :int(length)])
                labels.append(int(arrays["labels"][i]))
                instructions.append(texts[i])
                groups.append(f"{directory}/{path.stem}/start{int(arrays['starts'][i])}")
    return ClipSet(clips, np.array(labels, np.int64), instructions, groups, [SOURCE] * len(clips))
