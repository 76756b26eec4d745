"""Training loop of the reward judge (the classifier backend); its clips come from judge_clips.

Threshold: after training (optionally keeping the weights with the lowest validation loss), the judge's
threshold is chosen on the validation split so that validation recall >= ``target_recall`` (default
0.9) with the best precision that allows (RL needs a reward with high recall and stable precision,
PAPER.md); within the range of thresholds that give those same figures, the logit midpoint is taken
(see :func:`recall_threshold`). ``threshold_on`` names the validation clips the threshold is picked on:
all of them, or only those of one source ("imagined": the clips RL's reward is computed on, which a
judge scores lower than real ones when Prophet blurs the success state). The rule and the validation
figures (overall and per source, each with the threshold that source alone would give) are saved in
``judge_training.json`` beside the weights, the threshold in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prophrl_common.config_io import ConfigError, require_finite_numbers
from prophrl_common.outputs import OutputKind, check_output_dir
from prophrl_nn.optimization import clipped_step, warmup_cosine
from prophrl_worldmodel.configuration_judge import THRESHOLD_SOURCES, JudgeConfig
from prophrl_worldmodel.modeling_judge import RewardJudge, frames_at, uniform_indices
from prophrl_worldmodel.judge_metrics import BinaryMetrics, precision_recall, recall_threshold, roc_auc



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
    # The validation clips the threshold is picked on: "all", or one source ("real" / "imagined").
    threshold_on: str = "all"
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
        if self.threshold_on not in THRESHOLD_SOURCES:
            raise ConfigError(f"threshold_on must be one of {', '.join(THRESHOLD_SOURCES)}, got {self.threshold_on!r}")
        if self.learning_rate <= 0 or self.eval_every <= 0 or self.max_pixel_shift < 0:
            raise ConfigError("learning_rate and eval_every must be positive, max_pixel_shift >= 0")
        if self.weight_decay < 0 or self.grad_clip <= 0 or self.warmup_steps < 0 or self.brightness_jitter < 0:
            raise ConfigError("need weight_decay >= 0, grad_clip > 0, warmup_steps >= 0 and brightness_jitter >= 0")
        return self


# What `prophrl judge train --out` writes (the TensorBoard log goes beside it, OUT_tensorboard); JUDGE_SUMMARY
# records what it trained on (judge_cli).
JUDGE_SUMMARY = "summary.json"
JUDGE_OUTPUT = OutputKind("reward judge", frozenset({"config.json", "model.safetensors", "judge_training.json",
                                                      JUDGE_SUMMARY}))


def imagined_training_steps(judge_dir: str | Path) -> int | None:
    """The Euler steps per Prophet clip of the imagined clips a judge was trained on (`prophrl judge train
    --imagined-from ... --num-steps`, recorded in its JUDGE_SUMMARY); None when it learned no imagined clips or
    its directory does not say."""
    try:
        steps = json.loads((Path(judge_dir) / JUDGE_SUMMARY).read_text()).get("imagined_num_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


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
    # Per validation source: AUC, the figures at the chosen threshold, and the threshold that source alone gives.
    val_by_source: dict = dataclasses.field(default_factory=dict)


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


def pick_threshold(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray, threshold_on: str,
                   target_recall: float) -> float:
    """The threshold for `target_recall` (judge_metrics.recall_threshold) on the validation clips that
    `threshold_on` names: all of them, or those whose source it is."""
    on = np.ones(len(labels), bool) if threshold_on == "all" else np.asarray(sources) == threshold_on
    return recall_threshold(probs[on], labels[on], target_recall)


def validation_by_source(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray, threshold: float,
                         target_recall: float) -> dict[str, dict]:
    """Per source of the validation clips: AUC, the figures at `threshold`, and the threshold that this
    source's clips alone would give for `target_recall` (None without a successful clip)."""
    out = {}
    for source in sorted(set(sources.tolist())):
        mask = sources == source
        p, y = probs[mask], labels[mask]
        own = recall_threshold(p, y, target_recall) if y.any() else None
        out[source] = {"auc": roc_auc(p, y), **precision_recall(p, y, threshold).as_dict(),
                       "own_threshold": own, "clips": int(mask.sum()), "positives": int(y.sum())}
    return out


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
        gain = 1 + (torch.rand(b, 1, 1, 1, 1, generator=generator).to(frames.device) * 2 - 1) * j
        bias = (torch.rand(b, 1, 1, 1, 1, generator=generator).to(frames.device) * 2 - 1) * j / 2
        frames = (frames * gain + bias).clamp(0, 1)
    return frames


def _batch(clips: list, indices: np.ndarray, config: JudgeConfig, rng: np.random.Generator) -> torch.Tensor:
    return torch.stack([frames_at(clips[i], _jittered_indices(len(clips[i]), config.num_frames, rng),
                                  config.image_size) for i in indices])


def train_judge(clips, labels, instructions, config: JudgeConfig, out_dir: str | Path, steps: int, *,
                groups: Sequence[str] | None = None, sources: Sequence[str] | None = None,
                train_config: JudgeTrainConfig = JudgeTrainConfig(),
                log_dir: str | Path | None = None, show_progress: bool = True,
                overwrite: bool = False, device: str | torch.device = "cpu") -> JudgeTrainResult:
    """Train a RewardJudge on `device`, pick its threshold on the validation split, save it to out_dir.

    clips: list of (T_i, H, W, 3) uint8 arrays (or a (B, T, H, W, 3) array), labels 0/1, one instruction
    per clip; groups (episode ids) keep every episode on one side of the train / validation split
    (without groups, clips are split one by one); sources ("real" / "imagined" per clip, default all
    "real") give the per-source validation figures and the clips ``threshold_on`` picks. TensorBoard
    scalars go to log_dir when given. An existing out_dir is replaced only with ``overwrite`` and only
    when it is a previous judge (prophrl_common.outputs); a loss that becomes NaN / inf stops training
    (NonFiniteError) with nothing saved.
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
    sources = ["real"] * len(clips) if sources is None else [str(x) for x in sources]
    if len(sources) != len(clips):
        raise ConfigError(f"{len(sources)} sources for {len(clips)} clips")
    train_idx, val_idx = split_by_group(labels, groups, cfg.val_fraction, cfg.seed)
    pos, neg = train_idx[labels[train_idx] == 1], train_idx[labels[train_idx] == 0]
    if not len(pos) or not len(neg):
        raise ConfigError(f"training needs successful and unsuccessful clips; the training split has "
                          f"{len(pos)} successful and {len(neg)} unsuccessful")
    has_val = len(val_idx) > 0 and 0 < labels[val_idx].sum() < len(val_idx)
    val_sources = np.array([sources[i] for i in val_idx], dtype=object)
    if cfg.threshold_on != "all" and has_val and not labels[val_idx][val_sources == cfg.threshold_on].any():
        raise ConfigError(f"threshold_on={cfg.threshold_on!r}: the validation split has no successful "
                          f"{cfg.threshold_on} clip to pick the threshold on (sources: {sorted(set(sources))})")

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    judge = RewardJudge(config).to(device)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = warmup_cosine(optimizer, cfg.warmup_steps, steps)
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
            frames = _augment(_batch(clips, batch_idx, config, rng).to(judge.device), cfg, generator)
            logits = judge(frames, [instructions[i] for i in batch_idx])
            targets = torch.from_numpy(labels[batch_idx]).float().to(judge.device) * (1 - cfg.label_smoothing) \
                + cfg.label_smoothing / 2
            loss = F.binary_cross_entropy_with_logits(logits, targets)
            losses.append(clipped_step(loss, optimizer, schedule, judge.parameters(), cfg.grad_clip, "judge training",
                                       step))
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
    val_metrics, val_auc, threshold, by_source = None, float("nan"), config.threshold, {}
    if has_val:
        val_auc, _, probs = validate()
        threshold = pick_threshold(probs, val_labels, val_sources, cfg.threshold_on, cfg.target_recall)
        val_metrics = precision_recall(probs, val_labels, threshold)
        by_source = validation_by_source(probs, val_labels, val_sources, threshold, cfg.target_recall)
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
             "val_metrics": val_metrics.as_dict() if val_metrics else None, "val_by_source": by_source,
             "train_set": train_set, "val_set": val_set, "final_train_loss": float(np.mean(losses[-cfg.eval_every:])),
             "seconds": seconds}
    path = judge.to("cpu").save_pretrained(out_dir, extra=extra)
    return JudgeTrainResult(Path(path), threshold, losses, best_step, val_auc, val_metrics, train_set, val_set, seconds,
                            by_source)
