"""Training data and training loop for the reward judge (the classifier backend).

Clips and their labels (PAPER.md: LIBERO's judge is a classifier trained on rollouts labelled by the
simulator; we also label Prophet-imagined clips by the sim's ground truth, for domain match).

A *clip* is an episode's frames from its first frame up to some last frame: the judge scores a whole
rollout from its start. Labels must be honest about the state the clip ends in, and bags2dataset
shards do not store the step at which success happened, so labels rely on how sim episodes end
(``prophrl_trainer.sim_rollout.run_episode``): a successful episode stops ``steps_after_success``
(default 5) control steps after the success step, and a failed one runs to ``max_steps``. With L
frames (one per control step) the first frame that shows the success state of a successful episode
is L - steps_after_success. Hence, per episode:

- positive (1): a successful episode's clip ending at one of its last ``positive_tail_frames``
  frames (default 3, all after the success frame, with 2 frames to spare);
- negative (0): ``negatives_per_success`` prefixes of a successful episode ending at least
  ``negative_margin_frames`` frames before the success frame ("not yet successful": the cube is
  still on the table or only just grasped), and, for a failed episode, the whole episode plus
  ``negatives_per_failure - 1`` of its prefixes (it never succeeded).

Every prefix is at least ``min_clip_frames`` long. Episodes too short for a valid negative prefix
contribute positives only.

Imagined clips (:func:`imagined_clips`): each recorded episode's actions are replayed through
Prophet from the episode's first frame (``Prophet.rollout``, chunks of ``action_horizon`` actions; the
last chunk is padded with "hold still" actions: zero motion, the last gripper command). Imagined
frame k (frame 0 = the real first frame) stands for real frame k * actions_per_frame. A real clip
end e becomes imagined end floor(e / apf) for negatives (an earlier state, so still not successful)
and ceil(e / apf) for positives (a later state: the success state persists while the arm holds).

Threshold: after training (optionally keeping the weights with the lowest validation loss), the judge's
threshold is chosen on the validation split so that validation recall >= ``target_recall`` (default
0.9) with the best precision that allows (RL needs a reward with high recall and stable precision,
PAPER.md); within the range of thresholds that give those same figures, the logit midpoint is taken
(see :func:`recall_threshold`). The rule and the validation figures are saved in
``judge_training.json`` beside the weights, the threshold in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prophrl_common.chunks import ARM_ACTION_DIM
from prophrl_common.config_io import ConfigError, require_finite_numbers
from prophrl_common.outputs import OutputKind, check_output_dir
from prophrl_common.weights import require_finite_loss
from prophrl_worldmodel.configuration_judge import JudgeConfig
from prophrl_data.shards import EpisodeDataset
from prophrl_worldmodel.modeling_judge import RewardJudge, frames_at, uniform_indices


# ----------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """How clips are cut from episodes and labelled (see the module docstring)."""

    steps_after_success: int = 5      # sim_rollout.run_episode's default
    positive_tail_frames: int = 3
    negative_margin_frames: int = 10
    negatives_per_success: int = 3
    negatives_per_failure: int = 3
    min_clip_frames: int = 8
    seed: int = 0

    def validate(self) -> "ClipSettings":
        if not 1 <= self.positive_tail_frames <= self.steps_after_success:
            raise ConfigError("positive_tail_frames must be in [1, steps_after_success]: a positive clip must end "
                              "at or after the success frame")
        for key in ("steps_after_success", "negative_margin_frames", "negatives_per_success",
                    "negatives_per_failure", "min_clip_frames"):
            if getattr(self, key) < 0:
                raise ConfigError(f"clip settings: {key} must be >= 0")
        if self.min_clip_frames < 2:
            raise ConfigError("clip settings: min_clip_frames must be >= 2")
        return self


@dataclasses.dataclass
class Episode:
    episode_id: str
    instruction: str
    task: str
    success: bool
    frames: np.ndarray    # (L, H, W, 3) uint8
    actions: np.ndarray   # (L, 7) float32: the action executed after each frame


@dataclasses.dataclass
class ClipSet:
    """Labelled clips. Unpacks as (clips, labels, instructions) for convenience."""

    clips: list[np.ndarray]           # (T_i, H, W, 3) uint8 each (prefixes are views of episode frames)
    labels: np.ndarray                # (N,) int64, 1 = success
    instructions: list[str]
    groups: list[str]                 # episode id per clip: splits never cut an episode
    sources: list[str]                # "real" | "imagined"

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        n = len(self.clips)
        if not (len(self.labels) == len(self.instructions) == len(self.groups) == len(self.sources) == n):
            raise ValueError("ClipSet fields have different lengths")

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        return iter((self.clips, self.labels, self.instructions))

    def subset(self, indices: Iterable[int]) -> "ClipSet":
        idx = list(indices)
        return ClipSet([self.clips[i] for i in idx], self.labels[idx], [self.instructions[i] for i in idx],
                       [self.groups[i] for i in idx], [self.sources[i] for i in idx])

    def __add__(self, other: "ClipSet") -> "ClipSet":
        return ClipSet(self.clips + other.clips, np.concatenate([self.labels, other.labels]),
                       self.instructions + other.instructions, self.groups + other.groups,
                       self.sources + other.sources)

    def counts(self) -> dict[str, int]:
        return {"clips": len(self), "positives": int(self.labels.sum()), "negatives": int((1 - self.labels).sum()),
                "episodes": len(set(self.groups))}


def load_episodes(dataset_dirs: str | Path | Sequence[str | Path]) -> list[Episode]:
    """Every episode of known outcome of one or more bags2dataset outputs (frames + executed actions + ground
    truth); those of unknown outcome are left out with a warning (see
    prophrl_data.shards.episodes_with_known_outcome)."""
    if isinstance(dataset_dirs, (str, Path)):
        dataset_dirs = [dataset_dirs]
    episodes = []
    for directory in map(Path, dataset_dirs):
        for episode in EpisodeDataset(directory).episodes(("frames", "actions"), known_outcome_for="judge training"):
            frames, actions, meta = episode.frames, episode.actions, episode.entry
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) != len(actions):
                raise ConfigError(f"{episode.shard}: expected (L, H, W, 3) uint8 frames and one action "
                                  f"per frame, got {frames.shape} {frames.dtype} and {actions.shape}")
            episodes.append(Episode(f"{directory.name}/{meta.get('episode_id', episode.position)}", meta["instruction"],
                                    meta.get("task", ""), bool(meta["success"]), frames,
                                    np.asarray(actions, np.float32)))
    if not episodes:
        raise ConfigError(f"no episodes in {[str(d) for d in dataset_dirs]}")
    return episodes


def clip_ends(length: int, success: bool, settings: ClipSettings, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(last frame index, label) pairs for an episode of `length` frames (see the module docstring)."""
    ends: list[tuple[int, int]] = []
    if success:
        ends += [(e, 1) for e in range(max(0, length - settings.positive_tail_frames), length)]
        last_negative = length - settings.steps_after_success - 1 - settings.negative_margin_frames
        count = settings.negatives_per_success
    else:
        ends.append((length - 1, 0))
        last_negative = length - 2
        count = settings.negatives_per_failure - 1
    first = settings.min_clip_frames - 1
    if count > 0 and last_negative >= first:
        choices = np.arange(first, last_negative + 1)
        picked = rng.choice(choices, size=min(count, len(choices)), replace=False)
        ends += [(int(e), 0) for e in sorted(picked)]
    return ends


def _rng(settings: ClipSettings, episode_id: str) -> np.random.Generator:
    import zlib

    return np.random.default_rng([settings.seed, zlib.crc32(episode_id.encode())])


def clips_from_episodes(episodes: Sequence[Episode], settings: ClipSettings = ClipSettings()) -> ClipSet:
    settings.validate()
    clips, labels, instructions, groups = [], [], [], []
    for ep in episodes:
        for end, label in clip_ends(len(ep.frames), ep.success, settings, _rng(settings, ep.episode_id)):
            clips.append(ep.frames[:end + 1])
            labels.append(label)
            instructions.append(ep.instruction)
            groups.append(ep.episode_id)
    return ClipSet(clips, np.array(labels, np.int64), instructions, groups, ["real"] * len(clips))


def clips_from_datasets(dataset_dirs, settings: ClipSettings = ClipSettings()) -> ClipSet:
    """Sim-labelled clips from bags2dataset outputs: a ClipSet, which unpacks as (clips, labels, instructions)."""
    return clips_from_episodes(load_episodes(dataset_dirs), settings)


def replay_chunks(actions: np.ndarray, horizon: int) -> np.ndarray:
    """(L, 7) executed actions -> (N, horizon, 7) chunks covering the L - 1 transitions of the episode,
    the last chunk padded with hold-still actions (zero motion, the last gripper command)."""
    transitions = max(1, len(actions) - 1)
    n = math.ceil(transitions / horizon)
    out = np.zeros((n * horizon, ARM_ACTION_DIM), np.float32)
    used = actions[:transitions, :ARM_ACTION_DIM]
    out[:len(used)] = used
    out[len(used):, 6] = actions[max(0, transitions - 1), 6]
    return out.reshape(n, horizon, ARM_ACTION_DIM)


def imagined_clips(prophet, dataset_dirs=None, settings: ClipSettings = ClipSettings(), *,
                   episodes: Sequence[Episode] | None = None, max_episodes: int | None = None,
                   num_steps: int | None = None, batch_size: int = 4, seed: int = 0,
                   show_progress: bool = False) -> ClipSet:
    """Replay recorded episodes' actions through Prophet from their first frame; label every imagined
    clip with that episode's ground truth (see the module docstring). Pass dataset_dirs or episodes."""
    from tqdm import tqdm

    settings.validate()
    if episodes is None:
        if dataset_dirs is None:
            raise ValueError("imagined_clips needs dataset_dirs or episodes")
        episodes = load_episodes(dataset_dirs)
    episodes = list(episodes)[:max_episodes]
    config = prophet.config
    horizon, apf = config.action_horizon, config.actions_per_frame
    generator = torch.Generator(device=prophet.device).manual_seed(seed)
    # Episodes with the same number of chunks roll out together.
    by_chunks: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        by_chunks.setdefault(len(replay_chunks(ep.actions, horizon)), []).append(i)
    videos: dict[int, np.ndarray] = {}
    batches = [(n, idx[j:j + batch_size]) for n, idx in sorted(by_chunks.items())
               for j in range(0, len(idx), batch_size)]
    was_training = prophet.training
    prophet.eval()
    try:
        for _, members in tqdm(batches, desc="imagine episodes", unit="batch", disable=not show_progress):
            start = np.stack([episodes[i].frames[0] for i in members])
            chunks = np.stack([replay_chunks(episodes[i].actions, horizon) for i in members])
            frames = prophet.rollout(start, torch.from_numpy(chunks), None, num_steps, generator)
            size = frames.shape[2]
            # The real first frames at Prophet's size, (B, 1, S, S, 3) in [0, 255], lead each imagined video.
            first = frames_at(start, np.arange(len(members)), size).mul(255).permute(0, 2, 3, 1)[:, None]
            video = torch.cat([first, frames.cpu().float()], dim=1).round().clamp(0, 255).to(torch.uint8).numpy()
            for row, i in enumerate(members):
                videos[i] = video[row]
    finally:
        prophet.train(was_training)
    clips, labels, instructions, groups = [], [], [], []
    for i, ep in enumerate(episodes):
        video = videos[i]
        last = len(video) - 1
        for end, label in clip_ends(len(ep.frames), ep.success, settings, _rng(settings, ep.episode_id)):
            k = math.ceil(end / apf) if label else end // apf
            k = max(1, min(k, last))
            clips.append(video[:k + 1])
            labels.append(label)
            instructions.append(ep.instruction)
            groups.append(ep.episode_id)
    return ClipSet(clips, np.array(labels, np.int64), instructions, groups, ["imagined"] * len(clips))


# ----------------------------------------------------------------------------- metrics
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


# ----------------------------------------------------------------------------- training
@dataclasses.dataclass(frozen=True)
class JudgeTrainConfig:
    batch_size: int = 32           # half positives, half negatives (class balancing)
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    grad_clip: float = 1.0
    val_fraction: float = 0.25     # of episodes (groups), stratified by outcome
    target_recall: float = 0.9     # threshold choice on the validation split
    eval_every: int = 50           # validation loss / AUC logged every eval_every steps
    # Keep the weights with the lowest validation loss (else the final ones). Off by default: on a
    # validation split of a few episodes the loss is too noisy to pick weights by.
    keep_best: bool = False
    max_pixel_shift: int = 3       # random-shift augmentation, one shift per clip
    brightness_jitter: float = 0.1
    # Targets 1 - s/2 and s/2 instead of 1 and 0: bounded logits keep scores on unseen episodes from
    # collapsing to ~0 / ~1, so a threshold picked on a few validation episodes transfers.
    label_smoothing: float = 0.1
    seed: int = 0

    def validate(self) -> "JudgeTrainConfig":
        require_finite_numbers(self, "judge training")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (half positives, half negatives)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction must be in [0, 1)")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigError("target_recall must be in (0, 1]")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("label_smoothing must be in [0, 1)")
        if self.learning_rate <= 0 or self.eval_every <= 0 or self.max_pixel_shift < 0:
            raise ConfigError("learning_rate and eval_every must be positive, max_pixel_shift >= 0")
        if self.weight_decay < 0 or self.grad_clip <= 0 or self.warmup_steps < 0 or self.brightness_jitter < 0:
            raise ConfigError("need weight_decay >= 0, grad_clip > 0, warmup_steps >= 0 and brightness_jitter >= 0")
        return self


# What `prophrl judge train --out` writes (the TensorBoard log goes beside it, OUT_tensorboard).
JUDGE_OUTPUT = OutputKind("reward judge", frozenset({"config.json", "model.safetensors", "judge_training.json",
                                                      "summary.json"}))


@dataclasses.dataclass
class JudgeTrainResult:
    path: Path
    threshold: float
    losses: list[float]
    best_step: int                # the step whose weights were kept (steps unless keep_best)
    val_auc: float
    val_metrics: BinaryMetrics | None
    train_counts: dict
    val_counts: dict
    seconds: float


def split_by_group(labels: np.ndarray, groups: Sequence[str], val_fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation clip indices; whole groups (episodes) go to one side, stratified by whether the
    group has a positive clip."""
    rng = np.random.default_rng(seed)
    groups = list(groups)
    names = sorted(set(groups))
    positive = {g: False for g in names}
    for g, y in zip(groups, labels):
        positive[g] |= bool(y)
    val_groups: set[str] = set()
    if val_fraction > 0:
        for stratum in ([g for g in names if positive[g]], [g for g in names if not positive[g]]):
            if len(stratum) >= 2:
                k = min(len(stratum) - 1, max(1, round(val_fraction * len(stratum))))
                val_groups |= set(rng.choice(stratum, size=k, replace=False).tolist())
    is_val = np.array([g in val_groups for g in groups])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _jittered_indices(length: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Like uniform_indices (first and last frame fixed) with the middle ones drawn inside their segments."""
    if length <= num_frames or num_frames <= 2:
        return uniform_indices(length, num_frames)
    edges = np.linspace(0, length - 1, num_frames)
    middle = [rng.integers(math.ceil(edges[k] - 0.5 * (edges[1] - edges[0])),
                           math.floor(edges[k] + 0.5 * (edges[1] - edges[0])) + 1) for k in range(1, num_frames - 1)]
    return np.clip(np.array([0, *middle, length - 1]), 0, length - 1)


def _augment(frames: torch.Tensor, cfg: JudgeTrainConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, T, 3, S, S): one random shift and brightness/contrast change per clip (all its frames alike)."""
    b, t, c, h, w = frames.shape
    shift = cfg.max_pixel_shift
    if shift > 0:
        padded = F.pad(frames.reshape(b, t * c, h, w), (shift,) * 4, mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (b, 2), generator=generator).tolist()
        frames = torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(offsets)]).view(b, t, c, h, w)
    if cfg.brightness_jitter > 0:
        j = cfg.brightness_jitter
        gain = 1 + (torch.rand(b, 1, 1, 1, 1, generator=generator) * 2 - 1) * j
        bias = (torch.rand(b, 1, 1, 1, 1, generator=generator) * 2 - 1) * j / 2
        frames = (frames * gain + bias).clamp(0, 1)
    return frames


def _batch(clips: list, indices: np.ndarray, config: JudgeConfig, rng: np.random.Generator) -> torch.Tensor:
    return torch.stack([frames_at(clips[i], _jittered_indices(len(clips[i]), config.num_frames, rng),
                                  config.image_size) for i in indices])


def train_judge(clips, labels, instructions, config: JudgeConfig, out_dir: str | Path, steps: int, *,
                groups: Sequence[str] | None = None, train_config: JudgeTrainConfig = JudgeTrainConfig(),
                log_dir: str | Path | None = None, show_progress: bool = True,
                overwrite: bool = False) -> JudgeTrainResult:
    """Train a RewardJudge, pick its threshold on the validation split, save it to out_dir.

    clips: list of (T_i, H, W, 3) uint8 arrays (or a (B, T, H, W, 3) array), labels 0/1, one instruction
    per clip; groups (episode ids) keep every episode on one side of the train / validation split
    (without groups, clips are split one by one). TensorBoard scalars go to log_dir when given. An
    existing out_dir is replaced only with ``overwrite`` and only when it is a previous judge
    (prophrl_common.outputs); a loss that becomes NaN / inf stops training (NonFiniteError) with nothing saved.
    """
    from tqdm import tqdm

    check_output_dir(out_dir, JUDGE_OUTPUT, overwrite=overwrite)
    cfg = train_config.validate()
    config = config.validate()
    if config.backend != "classifier":
        raise ConfigError("train_judge trains the classifier backend")
    clips = list(clips)
    labels = np.asarray(labels, np.int64).reshape(-1)
    instructions = list(instructions)
    if not (len(clips) == len(labels) == len(instructions)):
        raise ConfigError(f"{len(clips)} clips, {len(labels)} labels, {len(instructions)} instructions")
    if not np.isin(labels, (0, 1)).all():
        raise ConfigError("labels must be 0 or 1")
    if steps <= 0:
        raise ConfigError("steps must be positive")
    groups = [str(i) for i in range(len(clips))] if groups is None else list(groups)
    if len(groups) != len(clips):
        raise ConfigError(f"{len(groups)} groups for {len(clips)} clips")
    train_idx, val_idx = split_by_group(labels, groups, cfg.val_fraction, cfg.seed)
    pos, neg = train_idx[labels[train_idx] == 1], train_idx[labels[train_idx] == 0]
    if not len(pos) or not len(neg):
        raise ConfigError(f"training needs successful and unsuccessful clips; the training split has "
                          f"{len(pos)} successful and {len(neg)} unsuccessful")
    has_val = len(val_idx) > 0 and 0 < labels[val_idx].sum() < len(val_idx)

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    judge = RewardJudge(config)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1))
        * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))

    val_clips = [clips[i] for i in val_idx]
    val_instr = [instructions[i] for i in val_idx]
    val_labels = labels[val_idx]

    def validate() -> tuple[float, float, np.ndarray]:
        probs = judge.score(val_clips, val_instr).numpy()
        loss = F.binary_cross_entropy(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6),
                                      torch.from_numpy(val_labels).float()).item()
        return roc_auc(probs, val_labels), loss, probs

    losses: list[float] = []
    best_loss = math.inf
    best_state, best_step = None, 0
    half = cfg.batch_size // 2
    start = time.time()
    judge.train()
    with tqdm(total=steps, desc="judge train", unit="step", disable=not show_progress) as bar:
        for step in range(1, steps + 1):
            batch_idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, cfg.batch_size - half)])
            frames = _augment(_batch(clips, batch_idx, config, rng), cfg, generator)
            logits = judge(frames, [instructions[i] for i in batch_idx])
            targets = torch.from_numpy(labels[batch_idx]).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / 2
            loss = F.binary_cross_entropy_with_logits(logits, targets)
            require_finite_loss(loss.item(), "judge training", step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(judge.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
            if step % cfg.eval_every == 0 or step == steps:
                recent = float(np.mean(losses[-cfg.eval_every:]))
                postfix = {"loss": f"{recent:.3f}"}
                if writer is not None:
                    writer.add_scalar("judge/train_loss", recent, step)
                    writer.add_scalar("judge/lr", schedule.get_last_lr()[0], step)
                if has_val:
                    auc, val_loss, _ = validate()
                    judge.train()
                    postfix["val_auc"] = f"{auc:.3f}"
                    if writer is not None:
                        writer.add_scalar("judge/val_auc", auc, step)
                        writer.add_scalar("judge/val_loss", val_loss, step)
                    if cfg.keep_best and val_loss < best_loss:
                        best_loss = val_loss
                        best_state = {k: v.detach().clone() for k, v in judge.state_dict().items()}
                        best_step = step
                bar.set_postfix(postfix)
    if best_state is not None:
        judge.load_state_dict(best_state)
    else:
        best_step = steps
    judge.eval()
    val_metrics, val_auc, threshold = None, float("nan"), config.threshold
    if has_val:
        val_auc, _, probs = validate()
        threshold = recall_threshold(probs, val_labels, cfg.target_recall)
        val_metrics = precision_recall(probs, val_labels, threshold)
    judge.with_threshold(threshold)
    seconds = time.time() - start
    if writer is not None:
        writer.add_scalar("judge/threshold", threshold, steps)
        writer.close()
    train_set = {"clips": int(len(train_idx)), "positives": int(len(pos)), "negatives": int(len(neg)),
                 "episodes": len({groups[i] for i in train_idx})}
    val_set = {"clips": int(len(val_idx)), "positives": int(val_labels.sum()),
               "negatives": int(len(val_idx) - val_labels.sum()), "episodes": len({groups[i] for i in val_idx})}
    extra = {"train_config": dataclasses.asdict(cfg), "steps": steps, "best_step": best_step,
             "threshold_rule": f"validation recall >= {cfg.target_recall}, best precision, logit midpoint of the gap",
             "threshold": threshold, "val_auc": val_auc,
             "val_metrics": val_metrics.as_dict() if val_metrics else None,
             "train_set": train_set, "val_set": val_set, "final_train_loss": float(np.mean(losses[-cfg.eval_every:])),
             "seconds": seconds}
    path = judge.save_pretrained(out_dir, extra=extra)
    return JudgeTrainResult(Path(path), threshold, losses, best_step, val_auc, val_metrics, train_set, val_set, seconds)


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
