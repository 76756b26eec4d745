"""Prophet pretraining, few-shot adaptation and fidelity evaluation on bags2dataset data (pure torch, no ROS).

- :func:`pretrain`: a from-scratch (or Wan-based) Prophet on one or more datasets. Phase 1 trains the
  VAE on single frames (skipped when ``vae_steps`` is 0 or the VAE is frozen, e.g. a pretrained Wan
  VAE under LoRA), then the latent normalisation (``fit_latent_statistics``) and the action
  normalisation (``fit_action_statistics``) are fitted on the training episodes, then phase 2 trains
  the denoiser + conditioning with the rectified-flow ``training_loss`` (VAE frozen), AdamW, linear
  warm-up and cosine decay to 10 %, gradient clipping.
- :func:`adapt`: few-shot adaptation of a trained Prophet to new data (a new robot / task / view)
  with LoRA adapters on the transformer attention (``mode="lora"``: nothing else changes) or a full
  fine-tune of the denoiser + conditioning (``mode="full"``; the VAE and the latent / action
  normalisation stay as pretrained in both modes). The loss on held-out episodes of the new data is
  measured before and after with the same clips, noise and times (``loss_before`` / ``loss_after``).
  :func:`adapt_from_bags` converts rosbag2 episodes with bags2dataset first.
- :func:`evaluate_fidelity`: closed-loop replay of held-out episodes (their recorded actions, from
  their first frame, ``Prophet.rollout``) against the real frames, scored per predicted frame
  (horizon) with PSNR, SSIM and Farneback flow EPE / cosine; ``model=None`` is the copy-last-frame
  baseline (the start frame, repeated). Side-by-side videos (real | imagined) are written as mp4.

Episodes are split into train / held-out per dataset by :func:`prophrl_worldmodel.clips.split_episodes`
with the same fraction everywhere (``DEFAULT_HELD_OUT_FRACTION``), so pretraining, adaptation and
evaluation agree on which episodes were never trained on. Checkpoints are ``Prophet.save_pretrained``
directories (safetensors + JSON, written atomically) with a ``training_summary.json`` beside them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from prophrl_common.atomic_io import write_json_atomic
from prophrl_common.config_io import ConfigError
from prophrl_common.outputs import OutputKind, check_output_dir
from prophrl_common.weights import require_finite_loss
from prophrl_data.shards import ShardEpisode
from prophrl_worldmodel.clips import ClipSampler, load_episodes, replay_chunks, replay_episode, split_episodes
from prophrl_worldmodel.configuration_prophet import ProphetConfig
from prophrl_worldmodel.metrics import VideoMetrics, aggregate_by_horizon, video_metrics
from prophrl_worldmodel.modeling_prophet import Prophet
from prophrl_worldmodel.pretrain_state import PHASES, PretrainState, load_model_into, resume_into
from prophrl_worldmodel.pretrain_state import Progress as PretrainProgress
from prophrl_worldmodel.pretrain_state import Restored as PretrainRestored

DEFAULT_HELD_OUT_FRACTION = 0.2
SUMMARY_NAME = "training_summary.json"
ADAPT_MODES = ("lora", "full")
DEFAULT_ADAPT_LR = {"lora": 5e-3, "full": 5e-4}
PSNR_CAP_DB = 100.0          # identical frames (inf dB) count as this, so means stay finite
DEFAULT_SAVE_EVERY = 500    # pretraining steps between two saved training states (with a state_dir)
EVAL_MAX_CLIPS = 64          # held-out clips in loss_before / loss_after
METRIC_FIELDS = ("psnr", "ssim", "flow_epe", "flow_cos")
Progress = Callable[[int, int, float], None]
# What `prophrl worldmodel pretrain|adapt --out` writes (TensorBoard logs go beside it, OUT_tensorboard).
PROPHET_OUTPUT = OutputKind("Prophet checkpoint", frozenset({"prophet_config.json", "model.safetensors",
                                                              "adapter.safetensors", SUMMARY_NAME}))


@dataclasses.dataclass(frozen=True)
class AdaptResult:
    checkpoint_path: Path
    metrics: dict[str, float]


# ----- helpers -------------------------------------------------------------------------------------------
def _dirs(dataset_dirs: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(dataset_dirs, (str, Path)):
        return [Path(dataset_dirs)]
    return [Path(d) for d in dataset_dirs]


def _check_steps(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")


def _check_rates(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then cosine decay to 10 % at `steps`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(steps - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Logger:
    """TensorBoard scalars when a log_dir is given, else nothing."""

    def __init__(self, log_dir: str | Path | None):
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _held_out_sampler(episodes: list[ShardEpisode], config: ProphetConfig) -> ClipSampler | None:
    """A sampler over the held-out episodes, or None when there are none or they are all too short."""
    try:
        return ClipSampler(episodes, config) if episodes else None
    except ConfigError:
        return None


def _mean_head(values: Sequence[float]) -> float:
    return float(np.mean(values[:max(1, len(values) // 10)])) if values else float("nan")


def _mean_tail(values: Sequence[float]) -> float:
    return float(np.mean(values[-max(1, len(values) // 10):])) if values else float("nan")


@torch.no_grad()
def evaluation_loss(model: Prophet, sampler: ClipSampler, max_clips: int = EVAL_MAX_CLIPS, batch_size: int = 8,
                    seed: int = 0) -> float:
    """Mean training_loss over up to max_clips evenly spaced clips with seeded noise and times: the same
    clips, noise and times for every model with this geometry, and the plain mean whatever the model's
    motion_loss_weight, so two models' values compare directly."""
    was_training = model.training
    model.eval()
    indices = np.unique(np.linspace(0, len(sampler) - 1, min(max_clips, len(sampler))).round().astype(int))
    generator = torch.Generator(device=model.device).manual_seed(seed)
    total = 0.0
    for begin in range(0, len(indices), batch_size):
        part = indices[begin:begin + batch_size]
        total += float(model.training_loss(sampler.batch(part), generator, motion_weighted=False)) * len(part)
    model.train(was_training)
    return total / len(indices)


def _train_denoiser(model: Prophet, sampler: ClipSampler, steps: int, batch_size: int, lr: float, rng, generator,
                    logger: _Logger, tag: str, progress: Progress | None, show_progress: bool,
                    grad_clip: float = 1.0, warmup_steps: int | None = None,
                    resume: _Resume | None = None) -> tuple[list[float], float]:
    from tqdm import tqdm

    parameters = model.denoiser_parameters()
    if not parameters:
        raise ConfigError("the model has no trainable denoiser weights")
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    warmup = min(100, max(steps // 10, 1)) if warmup_steps is None else max(warmup_steps, 1)
    scheduler = _schedule(optimizer, steps, warmup)
    model.train()
    losses: list[float] = []
    first, seconds = 0, 0.0
    if resume is not None:
        first, losses, seconds = resume.enter("denoiser", optimizer, scheduler)
    start = time.perf_counter() - seconds
    bar = tqdm(range(first, steps), desc=tag, unit="step", disable=not show_progress, initial=first, total=steps)
    for step in bar:
        loss = model.training_loss(sampler.random_batch(batch_size, rng), generator)
        require_finite_loss(loss.item(), tag, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        logger.scalar(f"{tag}/loss", losses[-1], step)
        logger.scalar(f"{tag}/lr", scheduler.get_last_lr()[0], step)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if progress is not None:
            progress(step + 1, steps, losses[-1])
        if resume is not None and resume.state.due(step + 1, steps):
            resume.save("denoiser", step + 1, losses, time.perf_counter() - start, optimizer, scheduler)
    return losses, time.perf_counter() - start


class _Resume:
    """A pretraining run's PretrainState and what it restored, shared by the VAE and the denoiser phases."""

    def __init__(self, state: PretrainState, restored: PretrainRestored | None, model: Prophet, rng, generator):
        self.state, self.restored, self.model, self.rng, self.generator = state, restored, model, rng, generator
        self.done = self.restored.progress if self.restored is not None else PretrainProgress()

    def skips(self, phase: str) -> bool:
        """The state is past this phase (the VAE phase, when it was saved in the denoiser phase)."""
        return PHASES.index(self.done.phase) > PHASES.index(phase)

    def load_model(self) -> None:
        """The saved weights and statistics, for a phase that is skipped (nothing else to restore)."""
        if self.restored is not None:
            load_model_into(self.restored, self.model, self.state.directory)

    def enter(self, phase: str, optimizer, scheduler) -> tuple[int, list[float], float]:
        """Restore a state saved in this phase (first step, losses, seconds so far); else save its start."""
        if self.restored is not None and self.done.phase == phase:
            resume_into(self.restored, self.model, optimizer, scheduler, self.rng, self.generator, self.state.directory)
            self.restored = None
            losses = self.done.vae_losses if phase == "vae" else self.done.losses
            seconds = self.done.vae_seconds if phase == "vae" else self.done.denoiser_seconds
            return self.done.step, list(losses), seconds
        self.restored = None
        self.save(phase, 0, [], 0.0, optimizer, scheduler)
        return 0, [], 0.0

    def vae_finished(self, steps: int, losses: list[float], seconds: float) -> None:
        self.done = PretrainProgress("vae", steps, list(losses), [], seconds, 0.0)

    def save(self, phase: str, step: int, losses: list[float], seconds: float, optimizer, scheduler) -> None:
        if phase == "vae":
            self.done = PretrainProgress("vae", step, list(losses), [], seconds, 0.0)
        else:
            self.done = PretrainProgress("denoiser", step, self.done.vae_losses, list(losses), self.done.vae_seconds,
                                         seconds)
        self.state.save(self.done, self.model, optimizer, scheduler, self.rng, self.generator)


# ----- pretraining ---------------------------------------------------------------------------------------
def _train_vae(model: Prophet, sampler: ClipSampler, steps: int, batch_size: int, lr: float, rng, generator,
               logger: _Logger, show_progress: bool, resume: _Resume | None) -> tuple[list[float], float]:
    """Phase 1: the VAE on single frames (nothing when it has no trainable weights or steps is 0)."""
    from tqdm import tqdm

    losses: list[float] = []
    start = time.perf_counter()
    parameters = model.vae_parameters()
    if steps and parameters:
        optimizer = torch.optim.AdamW(parameters, lr=lr)
        scheduler = _schedule(optimizer, steps, min(50, max(steps // 10, 1)))
        model.train()
        first, seconds = 0, 0.0
        if resume is not None:
            first, losses, seconds = resume.enter("vae", optimizer, scheduler)
        start = time.perf_counter() - seconds
        bar = tqdm(range(first, steps), desc="pretrain vae", unit="step", disable=not show_progress, initial=first,
                   total=steps)
        for step in bar:
            result = model.vae_loss(sampler.frames(batch_size * model.config.frames_per_clip, rng), generator)
            require_finite_loss(result.loss.item(), "pretrain vae", step)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(result.reconstruction.item())
            logger.scalar("vae/loss", result.loss.item(), step)
            logger.scalar("vae/reconstruction_l1", losses[-1], step)
            bar.set_postfix(l1=f"{losses[-1]:.4f}")
            if resume is not None and resume.state.due(step + 1, steps):
                resume.save("vae", step + 1, losses, time.perf_counter() - start, optimizer, scheduler)
    seconds = time.perf_counter() - start
    if resume is not None:
        resume.vae_finished(steps, losses, seconds)
    return losses, seconds


def _fit_statistics(model: Prophet, sampler: ClipSampler, rng, refit_latents: bool) -> None:
    """Between the phases: the latent (unless the VAE is kept as it came), action and residual normalisation."""
    model.eval()
    if refit_latents:
        model.fit_latent_statistics(sampler.frames(min(512, max(64, len(sampler))), rng))
    model.fit_action_statistics(sampler.all_actions())
    if model.config.predict_residual:
        clips = sampler.batch(rng.integers(0, len(sampler), size=min(256, len(sampler))))
        model.fit_residual_statistics(clips["current_frame"], clips["future_frames"])


def pretrain(dataset_dirs: str | Path | Iterable[str | Path], config: ProphetConfig, out_dir: str | Path,
             vae_steps: int = 500, steps: int = 2000, batch_size: int = 8, lr: float = 2e-3, seed: int = 0,
             log_dir: str | Path | None = None, *, vae_lr: float = 2e-3,
             held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION, device: str | torch.device = "cpu",
             progress: Progress | None = None, show_progress: bool = True, overwrite: bool = False,
             vae_from: str | Path | None = None, state_dir: str | Path | None = None,
             save_every: int = DEFAULT_SAVE_EVERY) -> Path:
    """Train a Prophet on bags2dataset directories and save it to out_dir; returns out_dir.

    state_dir: where the training state is saved every `save_every` steps (prophrl_worldmodel.pretrain_state);
    when it holds this run's state, training continues from it, exactly as an uninterrupted run would.

    vae_from: a Prophet checkpoint whose VAE (and latent normalisation) this one starts from, so denoiser
    variants can be compared on one autoencoder; vae_steps then fine-tune it (0: keep it as it is).

    The VAE phase draws batch_size * frames_per_clip single frames per step; the denoiser phase
    batch_size clips. out_dir/training_summary.json records the losses (first / last 10 % of steps),
    the held-out loss and timings. An existing out_dir is replaced only with ``overwrite`` and only when it
    is a previous Prophet checkpoint (prophrl_common.outputs), checked before any work; a loss that becomes
    NaN / inf stops training (NonFiniteError) with nothing saved.
    """
    _check_steps(vae_steps=vae_steps, steps=steps, batch_size=batch_size)
    _check_rates(lr=lr, vae_lr=vae_lr)
    if batch_size == 0:
        raise ConfigError("batch_size must be positive")
    config = config.validate()
    check_output_dir(out_dir, PROPHET_OUTPUT, overwrite=overwrite, inputs=_dirs(dataset_dirs))
    dirs = _dirs(dataset_dirs)
    state = restored = None
    if state_dir is not None:   # a state of another run, or a foreign directory, is refused before any work
        run = {"config": json.loads(config.to_json()), "datasets": [str(d.resolve()) for d in dirs],
               "vae_steps": vae_steps, "steps": steps, "batch_size": batch_size, "lr": lr, "vae_lr": vae_lr,
               "seed": seed, "held_out_fraction": held_out_fraction,
               "vae_from": None if vae_from is None else str(Path(vae_from).resolve())}
        state = PretrainState(state_dir, run, save_every)
        restored = state.restore()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    episodes = load_episodes(dirs, config.image_size, show_progress=show_progress)
    train, held_out = split_episodes(episodes, held_out_fraction)
    sampler = ClipSampler(train, config)
    held_sampler = _held_out_sampler(held_out, config)
    model = Prophet(config).to(device)
    if vae_from is not None:
        _copy_vae(Prophet.from_pretrained(vae_from), model, vae_from)
    logger = _Logger(log_dir)
    summary: dict = {"phase": "pretrain", "datasets": [str(d) for d in dirs], "config": config.name,
                     "train_episodes": len(train), "held_out_episodes": len(held_out), "train_clips": len(sampler),
                     "vae_steps": vae_steps, "steps": steps, "batch_size": batch_size, "lr": lr, "vae_lr": vae_lr,
                     "seed": seed}
    resume = None if state is None else _Resume(state, restored, model, rng, generator)
    try:
        if resume is not None and resume.skips("vae"):
            resume.load_model()
            vae_losses, vae_seconds = resume.done.vae_losses, resume.done.vae_seconds
        else:
            vae_losses, vae_seconds = _train_vae(model, sampler, vae_steps, batch_size, vae_lr, rng, generator, logger,
                                                 show_progress, resume)
            _fit_statistics(model, sampler, rng, refit_latents=vae_from is None or vae_steps > 0)
        summary.update(vae_seconds=vae_seconds, vae_l1_first=_mean_head(vae_losses),
                       vae_l1_last=_mean_tail(vae_losses))
        losses, seconds = _train_denoiser(model, sampler, steps, batch_size, lr, rng, generator, logger, "denoiser",
                                          progress, show_progress, resume=resume)
        summary.update(denoiser_seconds=seconds, step_time_s=seconds / max(steps, 1),
                       loss_first=_mean_head(losses), loss_last=_mean_tail(losses))
        if held_sampler is not None:
            summary["held_out_loss"] = evaluation_loss(model, held_sampler, seed=seed)
            logger.scalar("held_out/loss", summary["held_out_loss"], steps)
    finally:
        logger.close()
    model.eval()
    out = model.save_pretrained(out_dir)
    write_json_atomic(out / SUMMARY_NAME, summary)
    return out


def _copy_vae(source: Prophet, model: Prophet, where) -> None:
    """`source`'s VAE weights and latent normalisation into `model` (ConfigError when they do not fit)."""
    if source.config.image_size != model.config.image_size:
        raise ConfigError(f"{where}: its VAE was trained at {source.config.image_size} px, this config is "
                          f"{model.config.image_size} px")
    try:
        model.vae.load_state_dict(source.vae.state_dict())
    except RuntimeError as exc:
        raise ConfigError(f"{where}: its VAE does not fit this config ({exc})") from exc
    model.latent_mean.copy_(source.latent_mean)
    model.latent_std.copy_(source.latent_std)


# ----- adaptation ----------------------------------------------------------------------------------------
def adapt(checkpoint: str | Path, dataset_dirs: str | Path | Iterable[str | Path], steps: int, mode: str = "lora",
          out_dir: str | Path = "prophet_adapted", progress: Progress | None = None, *, batch_size: int = 8,
          lr: float | None = None, seed: int = 0, held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION,
          lora_rank: int | None = None, log_dir: str | Path | None = None, device: str | torch.device = "cpu",
          show_progress: bool = True, overwrite: bool = False,
          motion_loss_weight: float | None = None, action_dropout: float | None = None,
          action_guidance: float | None = None) -> AdaptResult:
    """Few-shot adaptation of the Prophet at `checkpoint` to the episodes of dataset_dirs; saved to out_dir.

    mode "lora": LoRA adapters (rank lora_rank, default the config's) on the transformer attention are
    the only trained weights; "full": the denoiser and conditioning weights. Metrics: loss_before /
    loss_after on held-out episodes (on the training episodes when there is only one episode:
    held_out_episodes 0 says so), the first / last training losses, timings and counts. out_dir is checked
    as in pretrain (never the input checkpoint). motion_loss_weight: the loss weighting to adapt with (default:
    the checkpoint's own); held-out losses are the plain mean either way. action_dropout / action_guidance:
    classifier-free guidance on the actions to adapt with / to save (default: the checkpoint's own).
    """
    if mode not in ADAPT_MODES:
        raise ConfigError(f"adapt mode must be one of {ADAPT_MODES}, got {mode!r}")
    _check_steps(steps=steps, batch_size=batch_size)
    if lr is not None:
        _check_rates(lr=lr)
    if batch_size == 0:
        raise ConfigError("batch_size must be positive")
    check_output_dir(out_dir, PROPHET_OUTPUT, overwrite=overwrite, inputs=[checkpoint, *_dirs(dataset_dirs)])
    begin = time.perf_counter()
    model = Prophet.from_pretrained(checkpoint, map_location=device)
    if motion_loss_weight is not None:
        model.configure_motion_weighting(motion_loss_weight)
    model.configure_action_guidance(action_dropout, action_guidance)
    if model.config.finetune == "full":
        if mode == "lora":
            model.configure_finetuning("lora", **({"lora_rank": lora_rank, "lora_alpha": float(lora_rank)}
                                                  if lora_rank else {}))
    elif mode == "full":
        raise ConfigError(f"{checkpoint}: the model carries LoRA adapters (finetune={model.config.finetune}); "
                          "adapt it with mode='lora' or start a full fine-tune from a full checkpoint")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    config = model.config
    dirs = _dirs(dataset_dirs)
    episodes = load_episodes(dirs, config.image_size, show_progress=show_progress)
    train, held_out = split_episodes(episodes, held_out_fraction)
    sampler = ClipSampler(train, config)
    held_sampler = _held_out_sampler(held_out, config)
    if held_sampler is None:  # one episode, or held-out episodes too short for a clip: measure on the training clips
        held_out, held_sampler = [], sampler
    loss_before = evaluation_loss(model, held_sampler, seed=seed + 1)
    logger = _Logger(log_dir)
    try:
        losses, seconds = _train_denoiser(model, sampler, steps, batch_size,
                                          DEFAULT_ADAPT_LR[mode] if lr is None else lr, rng, generator, logger,
                                          f"adapt_{mode}", progress, show_progress)
        loss_after = evaluation_loss(model, held_sampler, seed=seed + 1)
        logger.scalar("held_out/loss", loss_after, steps)
    finally:
        logger.close()
    model.eval()
    out = model.save_pretrained(out_dir)
    metrics = {
        "loss_before": loss_before, "loss_after": loss_after,
        "train_loss_first": _mean_head(losses), "train_loss_last": _mean_tail(losses),
        "steps": float(steps), "train_episodes": float(len(train)), "held_out_episodes": float(len(held_out)),
        "train_clips": float(len(sampler)),
        "trainable_parameters": float(sum(p.numel() for p in model.denoiser_parameters())),
        "step_time_s": seconds / max(steps, 1), "seconds": time.perf_counter() - begin,
    }
    write_json_atomic(out / SUMMARY_NAME, {"phase": "adapt", "mode": mode, "checkpoint": str(checkpoint),
                                            "datasets": [str(d) for d in dirs], **metrics})
    return AdaptResult(out, metrics)


def _bag_robot(bag: Path) -> str:
    from prophrl_data.bag_reader import open_bag

    robot = open_bag(bag).custom_data.get("robot", "")
    if not robot:
        raise ConfigError(f"bag {bag}: its metadata names no robot; pass robot=... (--robot)")
    return robot


def adapt_from_bags(checkpoint: str | Path, bag_paths: Sequence[str | Path], steps: int, mode: str = "lora",
                    out_dir: str | Path = "prophet_adapted", robot: str | None = None,
                    progress: Progress | None = None, *, dataset_dir: str | Path | None = None,
                    **adapt_kwargs) -> AdaptResult:
    """bags2dataset on rosbag2 episodes (one dataset per robot; the robot comes from each bag's metadata
    unless given), then :func:`adapt`. The datasets go to dataset_dir (kept) or a temporary directory."""
    from prophrl_data.bag_reader import discover_bags
    from prophrl_data.conversion import bags2dataset

    check_output_dir(out_dir, PROPHET_OUTPUT, overwrite=adapt_kwargs.get("overwrite", False),
                     inputs=[checkpoint, *bag_paths])
    bags = discover_bags(bag_paths)
    if not bags:
        raise ConfigError(f"no rosbag2 bags found in {[str(p) for p in bag_paths]}")
    groups: dict[str, list[Path]] = {}
    for bag in bags:
        groups.setdefault(robot or _bag_robot(bag), []).append(bag)
    with tempfile.TemporaryDirectory(prefix="prophrl-adapt-") as tmp:
        root = Path(dataset_dir) if dataset_dir is not None else Path(tmp)
        dirs = []
        for name, members in groups.items():
            target = root / f"dataset_{name}"
            bags2dataset(members, target, name, overwrite=True, show_progress=adapt_kwargs.get("show_progress", True))
            dirs.append(target)
        result = adapt(checkpoint, dirs, steps, mode, out_dir, progress, **adapt_kwargs)
    return AdaptResult(result.checkpoint_path, {**result.metrics, "bags": float(len(bags))})


# ----- fidelity ------------------------------------------------------------------------------------------
def _eval_episodes(episodes: list[ShardEpisode], config: ProphetConfig, count: int) -> list[ShardEpisode]:
    """Up to `count` episodes with at least one whole chunk, taken round-robin over the datasets."""
    by_dataset: dict[Path, list[ShardEpisode]] = {}
    for episode in episodes:
        if replay_chunks(episode, config) >= 1:
            by_dataset.setdefault(episode.dataset, []).append(episode)
    picked, queues = [], [list(v) for v in by_dataset.values()]
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


def _video_frames(real: np.ndarray, imagined: np.ndarray, min_height: int = 128) -> np.ndarray:
    """(T, h, 2w + 2, 3) uint8: real | imagined side by side, upscaled (nearest) to at least min_height."""
    separator = np.full((*real.shape[:2], 2, 3), 255, np.uint8)
    frames = np.concatenate([real, separator, imagined], axis=2)
    scale = max(1, math.ceil(min_height / frames.shape[1]))
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def write_side_by_side(path: str | Path, real: np.ndarray, imagined: np.ndarray, fps: float) -> Path:
    """An mp4 (MPEG-4 part 2, OpenCV's FFmpeg backend) of real | imagined (T, H, W, 3) RGB clips."""
    import cv2

    frames = _video_frames(np.asarray(real, np.uint8), np.asarray(imagined, np.uint8))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open an mp4v video writer")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def _padded(metrics: VideoMetrics, length: int) -> VideoMetrics:
    def pad(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values, np.full(length - len(values), np.nan)])
    return VideoMetrics(psnr=pad(np.minimum(metrics.psnr, PSNR_CAP_DB)), ssim=pad(metrics.ssim),
                        flow_epe=pad(metrics.flow_epe), flow_cos=pad(metrics.flow_cos))


def evaluate_fidelity(model: Prophet | None, dataset_dirs: str | Path | Iterable[str | Path], out_dir: str | Path,
                      episodes: int = 8, chunks: int = 3, num_steps: int | None = None, seed: int = 0, *,
                      config: ProphetConfig | None = None, label: str | None = None, split: str = "held_out",
                      held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION, write_videos: bool = True,
                      show_progress: bool = True) -> dict:
    """Replay up to `episodes` episodes (`chunks` action chunks each, from their first frame) closed loop.

    model None is the copy-last-frame baseline (it needs `config` for the clip geometry; default the
    model's). split "held_out" replays the episodes held out by split_episodes, "all" any episode.
    Horizon h (1-based) is the h-th predicted frame, frame_period_s after the previous one; PSNR / SSIM
    compare frame h, flow EPE / cos the motion from frame h - 1 to h (frame 0: the shared start frame).
    Writes out_dir/fidelity_<label>.json and (write_videos) out_dir/videos/<label>/*.mp4; returns
    {"label", "episodes", "chunks", "num_steps", "frame_period_s", "horizon": {metric: [per h], "count"},
    "mean": {metric: mean over horizons}, "videos", "seconds"}.
    """
    from tqdm import tqdm

    if split not in ("held_out", "all"):
        raise ConfigError(f"split must be 'held_out' or 'all', got {split!r}")
    _check_steps(episodes=episodes, chunks=chunks)
    if not episodes or not chunks:
        raise ConfigError("episodes and chunks must be positive")
    if model is None and config is None:
        raise ConfigError("the copy-last-frame baseline needs a config (the clip geometry to compare at)")
    config = model.config if model is not None else config
    label = label or ("baseline" if model is None else "model")
    if num_steps is not None and num_steps < 0:
        raise ConfigError(f"num_steps must be >= 0, got {num_steps}")
    out_dir = Path(out_dir)
    loaded = load_episodes(_dirs(dataset_dirs), config.image_size, show_progress=False)
    pool = split_episodes(loaded, held_out_fraction)[1] if split == "held_out" else loaded
    picked = _eval_episodes(pool, config, episodes)
    if not picked:
        raise ConfigError(f"no {'held-out ' if split == 'held_out' else ''}episode with a whole action chunk "
                          f"({config.action_horizon + 1} control steps) to replay in "
                          f"{[str(d) for d in _dirs(dataset_dirs)]}")
    begin = time.perf_counter()
    results, names, videos = [], [], []
    max_length = chunks * config.frames_per_clip
    frame_period = 0.0
    if model is not None:
        model.eval()
    for number, episode in enumerate(tqdm(picked, desc=f"fidelity {label}", unit="episode",
                                          disable=not show_progress)):
        replay = replay_episode(episode, config, chunks)
        frame_period = replay.frame_period_s
        if model is None:
            imagined = np.repeat(replay.start_frame[None], len(replay.real_frames), axis=0)
        else:
            extra = {}
            if replay.action_frames is not None:
                extra = {"action_frames": replay.action_frames[None], "calibrated": np.array([replay.calibrated])}
            generator = torch.Generator(device=model.device).manual_seed(seed + number)
            clip = model.rollout(replay.start_frame[None], replay.action_chunks[None], replay.history_frames[None],
                                 num_steps, generator, **extra)[0]
            imagined = clip.round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        real = np.concatenate([replay.start_frame[None], replay.real_frames])
        pred = np.concatenate([replay.start_frame[None], imagined])
        scored = video_metrics(real, pred)
        results.append(_padded(VideoMetrics(scored.psnr[1:], scored.ssim[1:], scored.flow_epe, scored.flow_cos),
                               max_length))
        names.append(episode.name)
        if write_videos:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in episode.episode_id)
            videos.append(write_side_by_side(out_dir / "videos" / label / f"{number:03d}_{safe}.mp4", real, pred,
                                             1.0 / frame_period if frame_period > 0 else 4.0))
    table = aggregate_by_horizon(results)
    counts = np.sum([~np.isnan(r.psnr) for r in results], axis=0)
    horizon = {name: table[name] for name in METRIC_FIELDS}
    keep = counts > 0
    horizon = {name: values[keep] for name, values in horizon.items()}
    mean = {name: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            for name, values in horizon.items()}
    report = {"label": label, "episodes": names, "num_episodes": len(names), "chunks": chunks,
              "num_steps": None if model is None else model.sampling_steps(num_steps),
              "frame_period_s": frame_period, "split": split,
              "horizon": {**{k: v.tolist() for k, v in horizon.items()}, "count": counts[keep].tolist()},
              "mean": mean, "videos": [str(v) for v in videos], "seconds": time.perf_counter() - begin}
    write_json_atomic(out_dir / f"fidelity_{label}.json", report)
    return report
