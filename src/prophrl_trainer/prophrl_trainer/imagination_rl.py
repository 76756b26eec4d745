"""RL of a VLA policy inside the Prophet world model: FA-GRPO + FlowScale on imagined rollouts (no ROS).

One update:
  1. sample `states_per_update` initial states (first frames + instruction + end-effector pose of
     recorded episodes, InitialStateSampler);
  2. for each, imagine a group of G closed-loop rollouts through a RolloutBackend: at every chunk the
     policy acts on each rollout's current imagined frame and integrated state with the SDE sampler
     (mode="sde"), which records the denoising latents and per-step log-probabilities; the backend
     (Prophet in process, or imagination servers over ROS) turns the chunks into the next clips;
  3. a RolloutScorer (the reward judge) scores the clips; rewards -> group-normalised advantages
     broadcast to the rollout's chunks;
  4. PPO-style epochs of the FA-GRPO loss (fa_grpo.policy_update).

Termination and masks (a choice; the paper only says "chunks after early termination are masked"):
with `early_termination` the scorer judges every live rollout's clip-so-far after each chunk. The
first chunk after which a rollout is judged successful (the judge's decision: p >= its threshold) ends it: its
reward is that score, its later chunks get mask 0 and never enter the loss (the world model keeps
stepping it only because a group is stepped as a batch). A rollout never judged successful is scored
on its full clip after the last chunk. Without early termination only the full clips are scored and
every chunk counts. The reward is the judge's success probability (`reward: probability`, a denser
signal than pass/fail) or its thresholded decision (`reward: binary`, the paper's judges' output).

The trainer logs to TensorBoard (RUN_DIR/tensorboard) and tqdm, appends one JSON line per finished
update to RUN_DIR/progress.jsonl, checkpoints atomically (checkpointing.py) and calls an
on_checkpoint(policy_dir, update) hook (the trainer node pushes LoadPolicy from it). Data-parallel
training (torchrun): every rank imagines its own groups, DistributedDataParallel averages the
gradients of the update, rank 0 logs and checkpoints (with every rank's RNG state).

CLI: `prophrl train` = main() here, also `python -m prophrl_trainer.imagination_rl`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from prophrl_common.chunks import ACTION_SPACES, ARM_ACTION_DIM, POLICY_STATE_DIM
from prophrl_common.config_io import ConfigError, dataclass_from_mapping, require_finite_numbers
from prophrl_common.weights import NonFiniteError, require_finite
from prophrl_common.outputs import OutputKind, check_run_dir
from prophrl_common.tables import print_table
from prophrl_nn.flow_matching import SamplerConfig
from prophrl_policy.modeling_vla import Observation, VLAPolicy
from prophrl_trainer import checkpointing as ckpt
from prophrl_trainer.fa_grpo import (FAGRPOConfig, FlowScaleConfig, RolloutBatch, flowscale_weights,
                                     group_advantages, policy_update)
from prophrl_data.shards import SHARD_FORMAT, EpisodeDataset
from prophrl_worldmodel.imagination import ImaginationStart

VARIANTS = {  # RLConfig.variant -> the loss's ratio level (prophrl_trainer.fa_grpo)
    "fa_grpo": "chunk", "fa_grpo_chunk_mean": "chunk_mean", "fa_grpo_element": "element", "flow_grpo": "step"}
REWARD_MODES = ("probability", "binary")
_LOSS_KEYS = ("clip_eps_low", "clip_eps_high", "kl_beta", "advantage_eps")


# ======================================================================================== config

@dataclasses.dataclass(frozen=True)
class RLConfig:
    """RL in imagination. Defaults are this project's choices (the paper publishes few), documented here.

    group_size: 8 rollouts per initial state (G; Flow-GRPO and the paper's GRPO use 8-16).
    states_per_update: 4 initial states per update, so 32 rollouts per update (per rank).
    chunks_per_rollout: 4 policy chunks per rollout (each chunk = one Prophet clip).
    denoising_steps, noise_level: the chunk sampler (SamplerConfig: K = 10 SDE steps per chunk, pi0's default
        number of Euler steps; Flow-GRPO's SDE noise level a = 0.7). The trained policy's checkpoints record it.
    learning_rate: 1e-5 (AdamW): keeps the per-update approx KL of the demo's tiny policy around 0.02-0.15
        (5e-5 left the trust region on the first step, see target_kl).
    weight_decay: 0. max_grad_norm: 1.0 (global gradient-norm clip).
    ppo_epochs: 2 passes over the rollout batch; minibatch_size: 64 chunks (0: the whole batch).
    target_kl: 0 (off); > 0: an update stops (before its step) at the first minibatch whose approx KL to the rollout
        policy exceeds 1.5 * target_kl (0: never). The action-level ratio of a 10-step, 10 x 7 action chunk
        is very sensitive to the weights: on the demo's tiny policy one AdamW step at lr 5e-5 gives an approx
        KL of 3.3 (clip fraction 0.8), at 1e-5 0.02-0.16 (the first update of `prophrl train --updates 1` on
        `prophrl demo`'s outputs, learning_rate set with --config).
    updates: 100 (the paper reports ~100 RL updates); `prophrl train --updates` overrides it.
    checkpoint_every: 10 updates (and always after the last); keep_checkpoints: the newest 3.
    eval_every: 10 updates (0: never): deterministic (ODE) rollouts from `eval_states` fixed initial
        states, `eval_rollouts` each, with fixed world-model seeds, so evaluations are comparable.
    seed: 0, for the initial-state draws, the policy's sampling noise and the world model's seeds.
    imagination_steps: Euler steps per Prophet clip (0: the world model's own default).
    shared_world_model_noise: False. True: the G rollouts of a group draw the same world-model noise
        (common random numbers), so reward differences within a group come from the policy's actions. On
        the demo's models, sharing the noise left 11 % of the within-group reward variance
        (bench/reward_signal.py): with independent noise the advantages mostly credit world-model noise.
        In-process imagination only.
    context_frames: 1 recorded frame given to the world model as the start (more: history frames).
    reward: "probability" | "binary", see the module docstring. early_termination: True.
    variant: "fa_grpo" (one ratio per chunk) | "fa_grpo_chunk_mean" (per chunk, length-normalised) |
        "fa_grpo_element" (one ratio per action element) | "flow_grpo" (Flow-GRPO's per-step ratio of
        element-averaged log-densities, the ablation baseline); see prophrl_trainer.fa_grpo.
    use_flowscale: True; flowscale: its weights (FlowScaleConfig).
    fa_grpo: the loss settings (clip_eps_low, clip_eps_high, kl_beta, advantage_eps); its group_size,
        ratio_level and flowscale come from the fields above. kl_beta > 0 keeps a frozen copy of the
        SFT policy as the KL reference.
    """

    group_size: int = 8
    states_per_update: int = 4
    chunks_per_rollout: int = 4
    denoising_steps: int = SamplerConfig.num_steps
    noise_level: float = SamplerConfig.noise_level
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ppo_epochs: int = 2
    minibatch_size: int = 64
    target_kl: float = 0.0
    updates: int = 100
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    eval_every: int = 10
    eval_states: int = 8
    eval_rollouts: int = 1
    seed: int = 0
    imagination_steps: int = 0
    shared_world_model_noise: bool = False
    context_frames: int = 1
    reward: str = "probability"
    early_termination: bool = True
    variant: str = "fa_grpo"
    use_flowscale: bool = True
    fa_grpo: FAGRPOConfig = FAGRPOConfig()
    flowscale: FlowScaleConfig = FlowScaleConfig()

    def __post_init__(self):
        require_finite_numbers(self, "RL config")
        for key in ("group_size", "states_per_update", "chunks_per_rollout", "denoising_steps", "ppo_epochs",
                    "updates", "checkpoint_every", "keep_checkpoints", "eval_states", "eval_rollouts",
                    "context_frames"):
            if getattr(self, key) < 1:
                raise ConfigError(f"RL config: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("minibatch_size", "eval_every", "imagination_steps", "seed"):
            if getattr(self, key) < 0:
                raise ConfigError(f"RL config: {key} must be >= 0, got {getattr(self, key)}")
        if self.group_size < 2:
            raise ConfigError("RL config: group_size must be >= 2 (advantages are relative within a group)")
        if not (self.noise_level > 0 and self.learning_rate > 0 and self.max_grad_norm > 0 and self.weight_decay >= 0
                and self.target_kl >= 0):
            raise ConfigError("RL config: need noise_level > 0, learning_rate > 0, max_grad_norm > 0, "
                              "weight_decay >= 0 and target_kl >= 0")
        if self.reward not in REWARD_MODES:
            raise ConfigError(f"RL config: reward must be one of {REWARD_MODES}, got {self.reward!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"RL config: variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")

    @property
    def chunk_sampler(self) -> SamplerConfig:
        return SamplerConfig(self.denoising_steps, self.noise_level)

    @property
    def algorithm(self) -> FAGRPOConfig:
        """The effective loss config: fa_grpo's loss settings with this config's G, variant and FlowScale."""
        return dataclasses.replace(self.fa_grpo, group_size=self.group_size, ratio_level=VARIANTS[self.variant],
                                   flowscale=dataclasses.replace(self.flowscale, enabled=self.use_flowscale))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["fa_grpo"] = {k: getattr(self.fa_grpo, k) for k in _LOSS_KEYS}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, source: str = "RL config", complete: bool = False) -> "RLConfig":
        """A user's config may leave fields at their defaults; a saved one (``complete``, a checkpoint's)
        must state every field, fa_grpo's loss settings and flowscale's included."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: must be a JSON object")
        data = dict(data)
        try:
            if "fa_grpo" in data:
                sub = data["fa_grpo"]
                if not isinstance(sub, dict):
                    raise ConfigError(f"{source}: fa_grpo must be an object")
                moved = sorted(set(sub) & {"group_size", "ratio_level", "flowscale"})
                if moved:
                    raise ConfigError(f"{source}: fa_grpo.{moved[0]} is set at the top level "
                                      "(group_size, variant, use_flowscale / flowscale)")
                missing = [key for key in _LOSS_KEYS if key not in sub] if complete else []
                if missing:
                    raise ConfigError(f"{source}: fa_grpo: missing required key '{missing[0]}' (a saved config must "
                                      "be complete)")
                loss = dataclass_from_mapping(FAGRPOConfig, sub, f"{source}: fa_grpo")
                data["fa_grpo"] = loss
            if "flowscale" in data:
                if not isinstance(data["flowscale"], dict):
                    raise ConfigError(f"{source}: flowscale must be an object")
                data["flowscale"] = dataclass_from_mapping(FlowScaleConfig, data["flowscale"], f"{source}: flowscale",
                                                           complete=complete)
            config = dataclass_from_mapping(cls, data, source, complete=complete)
            config.algorithm  # noqa: B018 - validates the combination
            return config
        except ValueError as exc:  # FAGRPOConfig / FlowScaleConfig validation
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_json_file(cls, path: str | Path, complete: bool = False) -> "RLConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the RL config: {exc}") from exc
        return cls.from_dict(data, str(path), complete=complete)


# What a run directory (`prophrl train --out`) holds; a run is resumed in it, never replaced.
RL_RUN_OUTPUT = OutputKind("FA-GRPO run directory", frozenset({"checkpoints", "tensorboard", "progress.jsonl",
                                                                "progress.jsonl.tmp"}))


# ================================================================================ initial states

class InitialStateSampler:
    """Start states for imagination from recorded episodes (bags2dataset outputs): each episode's first
    `context_frames` frames (the last is the start frame), its instruction, the end-effector pose at the
    start frame and the gripper command then in force (0 at an episode's first frame, else the previous
    step's gripper action, the SFT convention). Draws are seeded (per rank) and checkpointable."""

    def __init__(self, dataset_dirs: Sequence[str | Path], seed: int = 0, context_frames: int = 1, rank: int = 0):
        if isinstance(dataset_dirs, (str, Path)):
            dataset_dirs = [dataset_dirs]
        if not dataset_dirs:
            raise ConfigError("no dataset directories given")
        if context_frames < 1:
            raise ConfigError(f"context_frames must be >= 1, got {context_frames}")
        self.states: list[ImaginationStart] = []
        for directory in dataset_dirs:
            self.states += _load_starts(Path(directory), context_frames)
        self.seed = int(seed)
        self.rng = np.random.default_rng([self.seed, int(rank)])

    def __len__(self) -> int:
        return len(self.states)

    def sample(self, n: int) -> list[ImaginationStart]:
        """n starts; without replacement while the pool is large enough."""
        index = self.rng.choice(len(self.states), size=n, replace=n > len(self.states))
        return [self.states[i] for i in index]

    def fixed(self, n: int) -> list[ImaginationStart]:
        """The same n starts every time (evaluation); does not touch the training draws."""
        rng = np.random.default_rng([self.seed, 1_000_003])
        index = rng.choice(len(self.states), size=n, replace=n > len(self.states))
        return [self.states[i] for i in index]

    def get_state(self) -> dict:
        return ckpt.numpy_rng_state(self.rng)

    def set_state(self, state: dict) -> None:
        ckpt.set_numpy_rng_state(self.rng, state)


def _load_starts(dataset_dir: Path, context_frames: int) -> list[ImaginationStart]:
    starts = []
    dataset = EpisodeDataset(dataset_dir, "ee_delta_7d", needed_by="RL")
    for episode in dataset.episodes(("frames", "ee_pose", "actions")):
        frames, ee_pose, actions = episode.frames, episode.ee_pose, episode.actions
        if len(frames) < context_frames:
            continue
        start = context_frames - 1
        gripper = float(actions[start - 1, 6]) if start > 0 else 0.0
        starts.append(ImaginationStart(frames[:context_frames], episode.instruction,
                                       ee_pose[start].astype(np.float64), gripper))
    if not starts:
        raise ConfigError(f"{dataset_dir}: no episode with at least {context_frames} frames")
    return starts


# ====================================================================== backends and scorers

@dataclasses.dataclass
class RolloutGroup:
    """G rollouts from one start, as the trainer sees them; a backend advances them.

    current_frames (G, H, W, 3) uint8: what each rollout's camera shows now; states: the policy's
    proprio (G, 8) after each executed chunk, states[0] at the start; clips: (G, F, H, W, 3) per chunk.
    """

    instruction: str
    current_frames: np.ndarray
    states: list[np.ndarray]
    clips: list[np.ndarray] = dataclasses.field(default_factory=list)
    handle: object = None

    @property
    def num_rollouts(self) -> int:
        return len(self.current_frames)

    @property
    def state(self) -> np.ndarray:
        return self.states[-1]

    @property
    def frames(self) -> np.ndarray:
        """(G, T, H, W, 3): every imagined frame so far."""
        return np.concatenate(self.clips, axis=1)

    @property
    def state_history(self) -> np.ndarray:
        """(G, chunks + 1, 8)."""
        return np.stack(self.states, axis=1)

    def record(self, clip: np.ndarray, state: np.ndarray) -> None:
        self.clips.append(clip)
        self.states.append(np.asarray(state, np.float32))
        self.current_frames = clip[:, -1]


class RolloutBackend(Protocol):
    """Closed-loop imagination of groups of rollouts (in process: InProcessImagination; over ROS:
    ros_backends.ImagineClientBackend)."""

    action_horizon: int

    def open(self, starts: Sequence[ImaginationStart], num_rollouts: int, seeds: Sequence[int]) -> list[RolloutGroup]:
        ...

    def step(self, groups: Sequence[RolloutGroup], chunks: Sequence[np.ndarray]) -> None:
        """Execute chunks[i] (G, horizon, 7) in groups[i], for every i (concurrently where possible)."""

    def close(self, groups: Sequence[RolloutGroup]) -> None:
        ...


class RolloutScorer(Protocol):
    """Judges rollout clips (the reward judge, in process or over ROS)."""

    def score(self, clips: Sequence[np.ndarray], instructions: Sequence[str],
              states: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """clips: (T_i, H, W, 3) uint8 each; states: (chunks_i + 1, 8) each (judges may ignore them)
        -> (success probabilities (B,) float32, success decisions (B,) bool: the judge's own threshold)."""


def start_state(start: ImaginationStart) -> np.ndarray:
    if start.ee_pose is None:
        raise ConfigError("RL needs the end-effector pose of each start (the policy's proprio state)")
    return np.concatenate([start.ee_pose, [start.gripper]]).astype(np.float32)


def start_frames(start: ImaginationStart, num_rollouts: int) -> np.ndarray:
    """(G, H, W, 3): the recorded start frame, what every rollout's policy observes first."""
    return np.repeat(np.asarray(start.context_frames[-1], np.uint8)[None], num_rollouts, 0)


class InProcessImagination:
    """RolloutBackend over a Prophet in this process (prophrl_worldmodel.imagination.ImaginedRollouts)."""

    supports_shared_noise = True

    def __init__(self, prophet, num_steps: int | None = None, shared_noise: bool = False):
        self.prophet = prophet
        self.num_steps = num_steps or None
        self.shared_noise = shared_noise
        self.action_horizon = prophet.config.action_horizon

    def open(self, starts, num_rollouts, seeds):
        from prophrl_worldmodel.imagination import ImaginedRollouts

        groups = []
        for start, seed in zip(starts, seeds, strict=True):
            state = start_state(start)
            rollouts = ImaginedRollouts(self.prophet, start, num_rollouts, num_steps=self.num_steps, seed=int(seed),
                                        shared_noise=self.shared_noise)
            # the first observation is the recorded start frame itself (as over ROS, where the server's
            # resized copy is never sent back); later ones are the imagined frames
            groups.append(RolloutGroup(start.instruction, start_frames(start, num_rollouts),
                                       [np.repeat(state[None], num_rollouts, 0)], handle=rollouts))
        return groups

    def step(self, groups, chunks):
        for group, chunk in zip(groups, chunks, strict=True):
            rollouts = group.handle
            clip = rollouts.step(chunk)
            group.record(clip, np.concatenate([rollouts.ee_poses, rollouts.grippers[:, None]], axis=1))

    def close(self, groups):
        for group in groups:
            group.handle = None


class JudgeScorer:
    """RolloutScorer over prophrl_worldmodel's reward judge in this process (the production reward):
    a RewardJudge classifier or a VLMJudge, anything with score(clips, instructions) and threshold."""

    def __init__(self, judge):
        self.judge = judge
        self.threshold = float(judge.threshold)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> "JudgeScorer":
        from prophrl_worldmodel.modeling_judge import load_judge

        return cls(load_judge(path, "auto", device))

    @torch.no_grad()
    def score(self, clips, instructions, states):
        probs = self.judge.score(list(clips), list(instructions))
        probs = torch.as_tensor(probs).detach().float().cpu().numpy().reshape(len(clips))
        return probs, probs >= self.threshold


class EndEffectorDisplacementReward:
    """A programmatic TEST reward, not a task judge: p = sigmoid(direction . (p_end - p_start) / scale) on
    the integrated end-effector position. For tests and smoke runs with an untrained world model, where
    frames carry no task signal. `prophrl train --test-reward ee_right` uses it (right = -y in the
    REP-103 base frame: x forward, y left, z up)."""

    DIRECTIONS = {"ee_right": (0.0, -1.0, 0.0), "ee_left": (0.0, 1.0, 0.0), "ee_up": (0.0, 0.0, 1.0),
                  "ee_forward": (1.0, 0.0, 0.0)}

    def __init__(self, direction=(0.0, -1.0, 0.0), scale: float = 0.02, threshold: float = 0.9):
        direction = np.asarray(direction, np.float64)
        if direction.shape != (3,) or np.linalg.norm(direction) == 0 or scale <= 0 or not 0 < threshold < 1:
            raise ConfigError("displacement reward needs a non-zero 3-vector, scale > 0 and 0 < threshold < 1")
        self.direction = direction / np.linalg.norm(direction)
        self.scale, self.threshold = float(scale), float(threshold)

    @classmethod
    def named(cls, name: str, scale: float = 0.02) -> "EndEffectorDisplacementReward":
        if name not in cls.DIRECTIONS:
            raise ConfigError(f"unknown test reward {name!r}; available: {sorted(cls.DIRECTIONS)}")
        return cls(cls.DIRECTIONS[name], scale)

    def score(self, clips, instructions, states):
        out = []
        for history in states:
            history = np.asarray(history, np.float64)
            moved = float(self.direction @ (history[-1, :3] - history[0, :3]))
            out.append(1.0 / (1.0 + math.exp(-moved / self.scale)))
        probs = np.asarray(out, np.float32)
        return probs, probs >= self.threshold


# ================================================================================ distributed

@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> "DistContext":
        """Under torchrun (WORLD_SIZE > 1): join the process group (gloo on CPU, nccl on CUDA)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self.enabled or not values:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.cpu().tolist())}

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


class _LogProbs(nn.Module):
    """forward = policy.sde_log_probs, so DistributedDataParallel can wrap what the update differentiates."""

    def __init__(self, policy: VLAPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, obs, latents, sampler):
        return self.policy.sde_log_probs(obs, latents, sampler)


class _DataParallelPolicy:
    """What policy_update needs (sde_log_probs, parameters, train, action_mask), through DDP."""

    def __init__(self, policy: VLAPolicy, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        self.policy = policy
        self.ddp = DistributedDataParallel(_LogProbs(policy), device_ids=[device] if device.type == "cuda" else None)

    def sde_log_probs(self, obs, latents, sampler):
        return self.ddp(obs, latents, sampler)

    def parameters(self):
        return self.policy.parameters()

    def train(self, mode: bool = True):
        self.ddp.train(mode)
        return self

    @property
    def action_mask(self):
        return self.policy.action_mask


# ====================================================================================== trainer

@dataclasses.dataclass
class ObservationBatch:
    """Per-chunk observations of a rollout batch, indexable by a LongTensor (RolloutBatch.obs)."""

    images: torch.Tensor          # (B, 3, S, S) float, exactly what the policy saw
    instructions: list[str]
    states: torch.Tensor          # (B, 8)

    def __getitem__(self, idx: torch.Tensor) -> Observation:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Observation(self.images[idx], [self.instructions[i] for i in idx.tolist()], self.states[idx])


@dataclasses.dataclass
class Imagined:
    """The outcome of imagining n groups of G rollouts for up to C chunks."""

    images: torch.Tensor          # (n*G, C', 3, S, S)
    states: torch.Tensor          # (n*G, C', 8)
    latents: torch.Tensor | None  # (n*G, C', K+1, H, A), SDE only
    log_probs: torch.Tensor | None  # (n*G, C', K)
    means: torch.Tensor | None    # (n*G, C', K, H, A), the sampler's step means
    instructions: list[str]       # (n*G,)
    mask: np.ndarray              # (n, G, C') 1 = the chunk counts
    rewards: np.ndarray           # (n, G)
    success: np.ndarray           # (n, G) bool
    length: np.ndarray            # (n, G) chunks until termination
    timings: dict[str, float]


def policy_images(frames: np.ndarray, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) float in [0, 1], resized as VLAPolicy.encode_observation does."""
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255)
    if images.shape[-2:] != (size, size):
        images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class Trainer:
    """FA-GRPO (+ FlowScale) updates of `policy` on rollouts imagined by `backend`, scored by `scorer`."""

    def __init__(self, policy: VLAPolicy, backend: RolloutBackend, scorer: RolloutScorer,
                 sampler: InitialStateSampler, config: RLConfig, out_dir: str | Path, *,
                 ref_policy: VLAPolicy | None = None,
                 on_checkpoint: Callable[[Path, int], None] | None = None,
                 on_update: Callable[[dict], None] | None = None,
                 show_progress: bool = True, dist: DistContext | None = None, run_info: dict | None = None):
        pc = policy.config
        if pc.horizon != backend.action_horizon:
            raise ConfigError(f"the policy's chunk horizon is {pc.horizon} but the world model executes "
                              f"{backend.action_horizon} actions per clip (frames_per_clip * actions_per_frame): "
                              "RL needs them equal (SFT the policy with --horizon to match)")
        if pc.robot_action_dim != ACTION_SPACES["ee_delta_7d"] or pc.state_dim != POLICY_STATE_DIM:
            raise ConfigError(f"RL in imagination needs an ee_delta_7d policy (robot_action_dim "
                              f"{ACTION_SPACES['ee_delta_7d']}, state_dim {POLICY_STATE_DIM})")
        if config.algorithm.kl_beta > 0 and ref_policy is None:
            raise ConfigError("kl_beta > 0 needs the SFT policy as reference (ref_policy)")
        if config.shared_world_model_noise and not getattr(backend, "supports_shared_noise", False):
            raise ConfigError("shared_world_model_noise needs in-process imagination (`prophrl train`); "
                              f"{type(backend).__name__} does not share noise within a group")
        self.policy, self.backend, self.scorer, self.sampler = policy, backend, scorer, sampler
        self.config, self.out_dir = config, Path(out_dir)
        self.ref_policy = ref_policy.eval().requires_grad_(False) if ref_policy is not None else None
        self.on_checkpoint, self.on_update = on_checkpoint, on_update
        self.show_progress = show_progress
        self.dist = dist or DistContext()
        self.run_info = run_info or {}
        self.device = policy.action_pos.device
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        rank = self.dist.rank
        # policy sampling noise (on the policy's device) and minibatch order (CPU), per rank
        self.generator = torch.Generator(device=self.device).manual_seed(_seed(config.seed, rank, 1))
        self.order_generator = torch.Generator().manual_seed(_seed(config.seed, rank, 2))
        # the policy samples (and its checkpoints record) the RL chunk sampler
        policy.config = dataclasses.replace(policy.config, num_inference_steps=config.chunk_sampler.num_steps,
                                            noise_level=config.chunk_sampler.noise_level)
        self.step_variances = config.chunk_sampler.step_noise_variance()
        self.flowscale = flowscale_weights(self.step_variances, config.algorithm.flowscale)
        self.train_policy = _DataParallelPolicy(policy, self.device) if self.dist.enabled else policy
        self.update = 0
        self.history: list[dict] = []
        self.local_rewards: list[float] = []
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.last_checkpoint: Path | None = None
        self._resumed = False

    # ----- imagination ---------------------------------------------------------------------------
    def imagine(self, starts: Sequence[ImaginationStart], seeds: Sequence[int], num_rollouts: int, mode: str,
                generator: torch.Generator, stop_when_done: bool = True) -> Imagined:
        cfg = self.config
        n, g, chunks = len(starts), num_rollouts, cfg.chunks_per_rollout
        size = self.policy.config.image_size
        timings = {"policy_s": 0.0, "world_model_s": 0.0, "judge_s": 0.0}
        groups = self.backend.open(starts, g, seeds)
        instructions = [group.instruction for group in groups for _ in range(g)]
        images, states, latents, log_probs, means = [], [], [], [], []
        alive = np.ones((n, g), bool)
        masks = []
        rewards = np.zeros((n, g), np.float32)
        success = np.zeros((n, g), bool)
        length = np.full((n, g), chunks, np.int64)
        try:
            for c in range(chunks):
                t0 = time.perf_counter()
                frames = np.concatenate([group.current_frames for group in groups])
                state = torch.from_numpy(np.concatenate([group.state for group in groups]).astype(np.float32))
                obs = Observation(policy_images(frames, size), instructions, state)
                self.policy.eval()
                sample = self.policy.predict_action_chunk(obs, mode=mode, sampler=cfg.chunk_sampler,
                                                          generator=generator)
                images.append(obs.images)
                states.append(state)
                if mode == "sde":
                    latents.append(sample.latents.cpu())
                    log_probs.append(sample.log_probs.cpu())
                    means.append(sample.means.cpu())
                masks.append(alive.astype(np.float32))
                actions = sample.actions.cpu().numpy().reshape(n, g, *sample.actions.shape[1:])
                t1 = time.perf_counter()
                self.backend.step(groups, [actions[i] for i in range(n)])
                t2 = time.perf_counter()
                timings["policy_s"] += t1 - t0
                timings["world_model_s"] += t2 - t1
                last = c == chunks - 1
                if cfg.early_termination or last:
                    live = np.argwhere(alive)
                    if len(live):
                        probs, decisions = self.scorer.score(
                            [groups[i].frames[j] for i, j in live], [groups[i].instruction for i, _ in live],
                            [groups[i].state_history[j] for i, j in live])
                        probs = np.asarray(probs, np.float32).reshape(len(live))
                        decisions = np.asarray(decisions, bool).reshape(len(live))
                        if not np.isfinite(probs).all():
                            raise RuntimeError("the reward scorer returned NaN/inf")
                        for (i, j), p, ok in zip(live, probs, decisions):
                            ok = bool(ok)
                            if ok or last:
                                rewards[i, j] = p if cfg.reward == "probability" else float(ok)
                                success[i, j], alive[i, j], length[i, j] = ok, False, c + 1
                    timings["judge_s"] += time.perf_counter() - t2
                if stop_when_done and not alive.any():
                    break
        finally:
            self.backend.close(groups)
        stack = (lambda xs: torch.stack(xs, 1) if xs else None)
        return Imagined(stack(images), stack(states), stack(latents), stack(log_probs), stack(means), instructions,
                        np.stack(masks, axis=2), rewards, success, length, timings)

    def rollout_batch(self, imagined: Imagined, advantages: torch.Tensor, drop_masked: bool) -> RolloutBatch:
        """Flatten (n*G, C') chunks into a RolloutBatch (only the valid chunks unless data-parallel)."""
        ng, c = imagined.images.shape[:2]
        flat = (lambda x: x.reshape(ng * c, *x.shape[2:]))
        mask = torch.from_numpy(imagined.mask.reshape(ng, c)).reshape(-1)
        adv = advantages.reshape(ng, 1).expand(ng, c).reshape(-1)
        instructions = [t for t in imagined.instructions for _ in range(c)]
        obs = ObservationBatch(flat(imagined.images), instructions, flat(imagined.states))
        batch = RolloutBatch(obs, flat(imagined.latents), flat(imagined.log_probs), adv.float(), mask,
                             flat(imagined.means))
        if not drop_masked:
            return batch
        keep = torch.nonzero(mask > 0).flatten()
        obs = ObservationBatch(obs.images[keep], [instructions[i] for i in keep.tolist()], obs.states[keep])
        return RolloutBatch(obs, batch.latents[keep], batch.old_log_probs[keep], batch.advantages[keep],
                            torch.ones(len(keep)), batch.old_means[keep])

    # ----- one update ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.config
        t0 = time.perf_counter()
        starts = self.sampler.sample(cfg.states_per_update)
        seeds = [_seed(cfg.seed, self.dist.rank, self.update, i) for i in range(len(starts))]
        imagined = self.imagine(starts, seeds, cfg.group_size, "sde", self.generator,
                                stop_when_done=not self.dist.enabled)
        t1 = time.perf_counter()
        rewards = torch.from_numpy(imagined.rewards).double()
        advantages = group_advantages(rewards, cfg.algorithm.advantage_eps).flatten()
        batch = self.rollout_batch(imagined, advantages, drop_masked=not self.dist.enabled)
        stats = policy_update(self.train_policy, self.optimizer, batch, cfg.algorithm, cfg.chunk_sampler,
                              epochs=cfg.ppo_epochs, minibatch_size=cfg.minibatch_size or None,
                              max_grad_norm=cfg.max_grad_norm, ref_policy=self.ref_policy,
                              generator=self.order_generator, skip_empty=not self.dist.enabled,
                              target_kl=cfg.target_kl)
        if not math.isfinite(stats["loss"]):
            raise NonFiniteError(f"RL update {self.update + 1}: the loss became {stats['loss']}; training diverged "
                                 "(lower learning_rate), the last checkpoint is kept")
        require_finite(dict(self.policy.named_parameters()), f"RL update {self.update + 1}: the policy weights")
        t2 = time.perf_counter()
        group_std = imagined.rewards.std(axis=1)
        metrics = {
            "rollout/reward_mean": float(imagined.rewards.mean()),
            "rollout/success_rate": float(imagined.success.mean()),
            "rollout/length_chunks": float(imagined.length.mean()),
            "rollout/valid_chunk_fraction": float(imagined.mask.mean()),
            "rollout/reward_std_in_group": float(group_std.mean()),
            "rollout/groups_without_signal": float((group_std < 1e-8).mean()),
            **{f"train/{k}": float(v) for k, v in stats.items()},
            "time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
            **{f"time/{k}": v for k, v in imagined.timings.items()},
        }
        self.local_rewards.append(metrics["rollout/reward_mean"])  # this rank's own, before averaging
        return self.dist.mean(metrics)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Deterministic (ODE) policy from fixed starts with fixed world-model seeds; does not touch the
        training RNG streams (so evaluation never changes training)."""
        cfg = self.config
        starts = self.sampler.fixed(cfg.eval_states)
        seeds = [_seed(cfg.seed, 7_777, i) for i in range(len(starts))]
        generator = torch.Generator(device=self.device).manual_seed(_seed(cfg.seed, 7_778))
        imagined = self.imagine(starts, seeds, cfg.eval_rollouts, "ode", generator)
        return {"eval/reward_mean": float(imagined.rewards.mean()), "eval/success_rate": float(imagined.success.mean()),
                "eval/length_chunks": float(imagined.length.mean())}

    # ----- checkpoints ---------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        return {"generator": self.generator.get_state().cpu().numpy().tolist(),
                "order_generator": self.order_generator.get_state().numpy().tolist(),
                "torch_global": torch.get_rng_state().numpy().tolist(),
                "numpy": self.sampler.get_state(), "python": ckpt.python_rng_state()}

    def save_checkpoint(self) -> Path | None:
        """Collective under data parallelism (every rank's RNG state is gathered); rank 0 writes."""
        states = self.dist.gather(self._rng_state())
        if not self.dist.is_main:
            return None
        tensors = {}
        for rank, state in enumerate(states):
            for key in ("generator", "order_generator", "torch_global"):
                tensors[f"rank{rank}.{key}"] = torch.tensor(state[key], dtype=torch.uint8)
        json_state = {"world_size": self.dist.world_size, "history": self.history, "run": self.run_info,
                      "rng": [{"numpy": s["numpy"], "python": s["python"]} for s in states]}
        path = ckpt.save_checkpoint(self.checkpoint_dir, self.update, self.policy, self.optimizer, tensors,
                                    json_state, self.config.to_json(), self.config.keep_checkpoints)
        self.last_checkpoint = path
        if self.on_checkpoint is not None:
            self.on_checkpoint(path / ckpt.POLICY_DIR, self.update)
        return path

    def load_checkpoint(self, path: str | Path) -> int:
        """Restore policy, optimizer, RNG streams, update count and history from a checkpoint."""
        path = Path(path)
        saved_config = RLConfig.from_json_file(path / ckpt.CONFIG_JSON, complete=True)
        if dataclasses.replace(saved_config, updates=self.config.updates) != self.config:
            raise ConfigError(f"{path}: the checkpoint was made with a different RL config")
        tensors, state = ckpt.load_checkpoint(path, self.policy, self.optimizer)
        rank = self.dist.rank
        if state.get("world_size", 1) == self.dist.world_size:
            self.generator.set_state(tensors[f"rank{rank}.generator"].to(self.generator.get_state().device))
            self.order_generator.set_state(tensors[f"rank{rank}.order_generator"])
            torch.set_rng_state(tensors[f"rank{rank}.torch_global"])
            self.sampler.set_state(state["rng"][rank]["numpy"])
            ckpt.set_python_rng_state(state["rng"][rank]["python"])
        else:  # a different number of ranks: the streams cannot continue; reseed them from the update count
            self.generator.manual_seed(_seed(self.config.seed, rank, 1, state["update"]))
            self.order_generator.manual_seed(_seed(self.config.seed, rank, 2, state["update"]))
            self.sampler.rng = np.random.default_rng([self.config.seed, rank, state["update"]])
        self.update = int(state["update"])
        self.history = list(state.get("history", []))
        self.last_checkpoint = path
        self._resumed = True
        return self.update

    def resume(self) -> int:
        """Continue from the newest checkpoint in out_dir/checkpoints (0 if there is none)."""
        ckpt.clean_stale(self.checkpoint_dir)
        latest = ckpt.latest_checkpoint(self.checkpoint_dir)
        return self.load_checkpoint(latest) if latest is not None else 0

    # ----- the loop ------------------------------------------------------------------------------
    def run(self, num_updates: int | None = None) -> list[dict]:
        """Train until `num_updates` updates have been done in total (default config.updates); a resumed
        trainer continues where its checkpoint stopped. Returns the per-update metrics history."""
        from tqdm import tqdm

        num_updates = self.config.updates if num_updates is None else int(num_updates)
        main = self.dist.is_main
        writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_stale(self.checkpoint_dir)
            writer = SummaryWriter(str(self.out_dir / "tensorboard"),
                                   purge_step=self.update + 1 if self._resumed else None)
            self._rewrite_progress()
            for k, w in enumerate(self.flowscale.tolist()):
                writer.add_scalar(f"flowscale/w_{k:02d}", w, self.update)
        bar = tqdm(total=num_updates, initial=self.update, desc=f"FA-GRPO ({self.config.variant})", unit="update",
                   disable=not (self.show_progress and main), dynamic_ncols=True)
        try:
            while self.update < num_updates:
                start = time.perf_counter()
                metrics = self.train_step()
                self.update += 1
                if self.config.eval_every and self.update % self.config.eval_every == 0 and main:
                    metrics.update(self.evaluate())
                metrics = {"update": self.update, **metrics, "time/update_total_s": time.perf_counter() - start}
                self.history.append(metrics)
                if self.update % self.config.checkpoint_every == 0 or self.update == num_updates:
                    self.save_checkpoint()
                if main:
                    for key, value in metrics.items():
                        if key != "update":
                            writer.add_scalar(key, value, self.update)
                    writer.flush()
                    with (self.out_dir / "progress.jsonl").open("a") as f:
                        f.write(json.dumps(metrics) + "\n")
                    bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}",
                                    success=f"{metrics['rollout/success_rate']:.2f}",
                                    clip=f"{metrics['train/clip_fraction']:.2f}")
                    if self.on_update is not None:
                        self.on_update(metrics)
                bar.update(1)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return self.history

    def _rewrite_progress(self) -> None:
        """progress.jsonl holds exactly the updates of the history (drops lines past a resumed checkpoint)."""
        path = self.out_dir / "progress.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(m) + "\n" for m in self.history))
        os.replace(tmp, path)


# ================================================================================ smoke setup

SMOKE_INSTRUCTIONS = ("push the cube to the right", "lift the red cube", "open the drawer")


@dataclasses.dataclass(frozen=True)
class SmokeSetup:
    """A tiny, real, UNTRAINED setup for tests and benchmarks: paths of a random-initialised Prophet, a
    random policy whose horizon is the Prophet's action_horizon, and a bags2dataset-layout dataset."""

    root: Path
    prophet: Path
    policy: Path
    data: Path

    def argv(self, out, updates: int, config: str | Path | None = None, *extra: str, judge: str | Path | None = None
             ) -> list[str]:
        """`prophrl train` arguments for this setup: with `judge`, that judge; else the end-effector test reward."""
        reward = ["--judge", str(judge)] if judge else ["--test-reward", "ee_right"]
        argv = ["--policy", str(self.policy), "--world-model", str(self.prophet), *reward,
                "--data", str(self.data), "--out", str(out), "--updates", str(updates), "--threads", "1",
                "--no-progress"]
        return argv + (["--config", str(config)] if config else []) + list(extra)

    def rl_config(self, name: str = "rl.json", **fields) -> Path:
        """Write a small RL config (overridable fields) next to the setup; returns its path."""
        values = {"group_size": 4, "states_per_update": 2, "chunks_per_rollout": 2, "denoising_steps": 3,
                  "learning_rate": 3e-3, "minibatch_size": 16, "checkpoint_every": 2, "keep_checkpoints": 2,
                  "eval_every": 0, "eval_states": 2, "imagination_steps": 1, **fields}
        path = self.root / name
        path.write_text(json.dumps(values, indent=1))
        return path


def write_smoke_dataset(root: Path, episodes: int = 3, size: int = 40, steps: int = 6, seed: int = 0) -> Path:
    """A bags2dataset-layout directory (index.json + shards/*.npz) of random frames; poses differ per episode."""
    root = Path(root)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    index = []
    for i in range(episodes):
        ee_pose = np.tile(np.array([0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0], np.float32), (steps, 1))
        ee_pose[:, 1] = 0.05 * i
        ee_pose[:, 0] += 0.01 * np.arange(steps)
        actions = np.zeros((steps, ARM_ACTION_DIM), np.float32)
        actions[:, 6] = np.arange(steps) % 2          # gripper commands 0, 1, 0, ...
        shard = f"shards/episode_{i:06d}.npz"
        np.savez(root / shard, frames=rng.integers(0, 255, (steps, size, size, 3), dtype=np.uint8),
                 ee_pose=ee_pose, actions=actions)
        index.append({"shard": shard, "instruction": SMOKE_INSTRUCTIONS[i % len(SMOKE_INSTRUCTIONS)],
                      "success": True, "num_samples": steps})
    (root / "index.json").write_text(json.dumps({"format": SHARD_FORMAT, "action_space": "ee_delta_7d",
                                                 "episodes": index}, indent=1))
    return root


def make_smoke_setup(root: str | Path, *, image_size: int = 32, frames_per_clip: int = 2, actions_per_frame: int = 2,
                     prophet_layers: int = 1, policy_hidden: int = 32, policy_layers: int = 1,
                     denoising_steps: int = 3, seed: int = 0) -> SmokeSetup:
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_policy.transforms import NormStats
    from prophrl_worldmodel.configuration_prophet import get_prophet_config
    from prophrl_worldmodel.modeling_prophet import Prophet

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    prophet = Prophet(get_prophet_config("tiny", image_size=image_size, num_layers=prophet_layers, ffn_dim=64,
                                         frames_per_clip=frames_per_clip, actions_per_frame=actions_per_frame))
    prophet.eval().save_pretrained(root / "prophet")
    config = get_vla_config("tiny", hidden_dim=policy_hidden, num_layers=policy_layers,
                            num_heads=max(1, policy_hidden // 16), image_size=image_size,
                            horizon=prophet.config.action_horizon, num_inference_steps=denoising_steps)
    # SFT-like normalisation: centimetre-scale position deltas per step
    stats = NormStats((0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0, 0.5), (0.1,) * POLICY_STATE_DIM, (0.0,) * ARM_ACTION_DIM,
                      (0.01, 0.01, 0.01, 0.05, 0.05, 0.05, 0.5))
    VLAPolicy(config, stats).save_pretrained(root / "policy")
    write_smoke_dataset(root / "data", size=image_size + 8, seed=seed)
    return SmokeSetup(root, root / "prophet", root / "policy", root / "data")


# ============================================================================================ CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prophrl train",
        description="FA-GRPO + FlowScale RL of an SFT policy inside a Prophet world model, rewarded by a judge.")
    parser.add_argument("--policy", required=True, help="SFT policy checkpoint directory (prophrl policy sft)")
    parser.add_argument("--world-model", required=True, help="Prophet checkpoint directory")
    reward = parser.add_mutually_exclusive_group(required=True)
    reward.add_argument("--judge", help="reward judge checkpoint directory")
    reward.add_argument("--test-reward", choices=sorted(EndEffectorDisplacementReward.DIRECTIONS),
                        help="FOR TESTS ONLY: a programmatic reward on the integrated end-effector motion")
    parser.add_argument("--test-reward-scale", type=float, default=0.02, help="metres (with --test-reward)")
    parser.add_argument("--data", nargs="+", required=True, help="bags2dataset output(s): the initial states")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, tensorboard, progress.jsonl)")
    parser.add_argument("--updates", type=int, default=0, help="total number of updates (default: the config's)")
    parser.add_argument("--config", default="", help="RL config JSON (RLConfig fields; default: built-in)")
    parser.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (torchrun: each rank its LOCAL_RANK)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and ":" not in name and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda, but CUDA is not available")
        torch.cuda.set_device(device)
    return device


def build_trainer(args: argparse.Namespace, dist: DistContext | None = None, show_progress: bool = True,
                  on_checkpoint=None, on_update=None, backend: RolloutBackend | None = None,
                  scorer: RolloutScorer | None = None) -> tuple[Trainer, int]:
    """Everything `prophrl train` sets up, from parsed arguments; returns (trainer, total updates).
    backend / scorer replace the in-process world model / judge (the ROS node passes its clients)."""
    dist = dist or DistContext()
    device = _device(args.device)
    out = check_run_dir(args.out, RL_RUN_OUTPUT, inputs=[args.policy, args.world_model, args.judge, *args.data])
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    if latest is not None and not args.resume:
        raise ConfigError(f"{out} already holds checkpoints (newest {latest.name}): pass --resume to continue "
                          "that run, or choose another --out")
    if args.resume and latest is not None:
        config = RLConfig.from_json_file(latest / ckpt.CONFIG_JSON, complete=True)
        if args.config and dataclasses.replace(RLConfig.from_json_file(args.config), updates=config.updates) != config:
            raise ConfigError(f"--config {args.config} differs from the config of the run in {out}")
    else:
        config = RLConfig.from_json_file(args.config) if args.config else RLConfig()
    if args.updates:
        if args.updates < 1:
            raise ConfigError("--updates must be >= 1")
        config = dataclasses.replace(config, updates=args.updates)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    policy = VLAPolicy.from_pretrained(args.policy).to(device)
    ref_policy = VLAPolicy.from_pretrained(args.policy).to(device) if config.fa_grpo.kl_beta > 0 else None
    if backend is None:
        from prophrl_worldmodel.modeling_prophet import Prophet

        prophet = Prophet.from_pretrained(args.world_model, map_location=device).eval().requires_grad_(False)
        backend = InProcessImagination(prophet, config.imagination_steps, config.shared_world_model_noise)
    if scorer is None:
        scorer = (JudgeScorer.from_pretrained(args.judge, str(device)) if args.judge else
                  EndEffectorDisplacementReward.named(args.test_reward, args.test_reward_scale))
    sampler = InitialStateSampler(args.data, seed=config.seed, context_frames=config.context_frames, rank=dist.rank)
    run_info = {"policy": str(args.policy), "world_model": str(args.world_model),
                "reward": f"judge:{args.judge}" if args.judge else f"test:{args.test_reward}",
                "data": [str(d) for d in args.data], "world_size": dist.world_size}
    trainer = Trainer(policy, backend, scorer, sampler, config, out, ref_policy=ref_policy,
                      on_checkpoint=on_checkpoint, on_update=on_update, show_progress=show_progress, dist=dist,
                      run_info=run_info)
    if args.resume:
        trainer.resume()
    return trainer, config.updates


def summary_rows(history: list[dict], max_rows: int = 10) -> list[list[str]]:
    if not history:
        return []
    picks = sorted({round(i * (len(history) - 1) / max(max_rows - 1, 1)) for i in range(max_rows)})
    rows = []
    for i in picks:
        m = history[i]
        ev = f"{m['eval/success_rate']:.2f}" if "eval/success_rate" in m else "-"
        rows.append([str(m["update"]), f"{m['rollout/reward_mean']:.3f}", f"{m['rollout/success_rate']:.2f}", ev,
                     f"{m['train/clip_fraction']:.3f}", f"{m.get('train/policy_kl', math.nan):.2e}",
                     f"{m['train/approx_kl_old']:.2e}", f"{m['train/kl']:.2e}",
                     f"{m['time/update_total_s']:.1f}"])
    return rows


def _local_rank(rank: int, world_size: int, port: int, argv: list[str], params_out: str | None) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dist = DistContext.from_env(args.device)
    import torch.distributed as torch_dist

    try:
        trainer, updates = build_trainer(args, dist, show_progress=False)
        trainer.run(updates)
        if params_out:
            from safetensors.torch import save_file

            Path(params_out).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in trainer.policy.state_dict().items()},
                      str(Path(params_out) / f"rank{rank}.safetensors"),
                      metadata={"rewards": json.dumps(trainer.local_rewards)})
    finally:
        torch_dist.destroy_process_group()


def run_local_ranks(world_size: int, argv: Sequence[str], params_out: str | Path | None = None,
                    start_method: str = "spawn") -> None:
    """torchrun without torchrun: `world_size` CPU ranks of `prophrl train argv` on this machine (gloo),
    started with torch.multiprocessing. With params_out, every rank saves its final policy weights there
    as rank<r>.safetensors (metadata "rewards": its own rollouts' mean reward per update), to compare the
    ranks. start_method "fork" skips re-importing torch/diffusers in the children (fast, for tests; only
    from a process that has not started OpenMP worker threads or a process group)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_local_rank, args=(world_size, port, list(argv), str(params_out) if params_out else None),
                       nprocs=world_size, join=True, start_method=start_method)


def main(argv: Sequence[str] | None = None) -> int:
    """`prophrl train ...` (and under torchrun, one rank of it). Returns the exit status."""
    from prophrl_common.cli_errors import run_reporting_errors

    args = build_parser().parse_args(argv)
    return run_reporting_errors("prophrl train", lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    dist = None
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        dist = DistContext.from_env(args.device)
        trainer, updates = build_trainer(args, dist, show_progress=not args.no_progress)
        start_update, start = trainer.update, time.perf_counter()
        history = trainer.run(updates)
        elapsed = time.perf_counter() - start
    finally:
        if dist is not None and dist.enabled:
            import torch.distributed as torch_dist

            torch_dist.destroy_process_group()
    if dist.is_main:
        done = trainer.update - start_update
        print_table(f"FA-GRPO ({trainer.config.variant}, FlowScale {'on' if trainer.config.use_flowscale else 'off'}) "
                    f"in {args.out}: {trainer.update} updates",
                    ["update", "reward", "success", "eval success", "clip frac", "policy KL", "ratio pseudo-KL",
                     "KL ref", "s/update"],
                    summary_rows(history))
        rate = f"{3600 * done / elapsed:.1f} updates/hour" if done else "nothing to do"
        print(f"\nthis session: {done} updates in {elapsed:.1f} s ({rate}) on {dist.world_size} rank(s); "
              f"last checkpoint: {trainer.last_checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
