"""RL in imagination: its configuration (RLConfig) and run-directory kind.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


from prophrl_common.config_io import ConfigError, dataclass_from_mapping, require_finite_numbers
from prophrl_common.outputs import OutputKind
from prophrl_trainer.checkpointing import MINED_CLIPS_DIR, SELECTED_POLICY_DIR
from prophrl_nn.flow_matching import SamplerConfig
from prophrl_trainer.fa_grpo import FAGRPOConfig, FlowScaleConfig
from prophrl_worldmodel.judge_ensemble import DEFAULT_DISAGREEMENT


VARIANTS = {  # RLConfig.variant -> the loss's ratio level (prophrl_trainer.fa_grpo)
    "fa_grpo": "chunk", "fa_grpo_chunk_mean": "chunk_mean", "fa_grpo_element": "element", "flow_grpo": "step"}
MIXED_PRECISION = ("none", "bf16")
REWARD_MODES = ("probability", "binary")
_LOSS_KEYS = ("clip_eps_low", "clip_eps_high", "kl_beta", "advantage_eps")




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
    checkpoint_every: 10 updates (and always after the last); keep_checkpoints: the newest 3; milestone_every:
        20, checkpoints at multiples of it are kept too (0: none), so `prophrl eval --over-training` can put
        the true success along training beside the imagined one.
    eval_every: 10 updates (0: never): deterministic (ODE) rollouts from `eval_states` fixed initial
        states, `eval_rollouts` each, with fixed world-model seeds, so evaluations are comparable.
    validation_states: 0 (off). > 0: that many recorded episodes (a fixed, seeded choice) are held out of the
        training draws and are the starts of the imagined evaluation instead of `eval_states` training starts;
        the SFT policy is evaluated on them before the first update, and the policy that scores best (judge
        reward of the ODE rollouts) is kept as RUN_DIR/best_policy (checkpointing.save_selected_policy). It
        ranks by the judge RL is paid by, so it cannot catch a judge RL has learned to fool: on the Panda door
        without the KL anchor it kept updates 60-100, 2.8 points below update 40 and 14.5 below update 20
        (README). Needs eval_every > 0.
    seed: 0, for the initial-state draws, the policy's sampling noise and the world model's seeds.
    imagination_steps: Euler steps per Prophet clip (0: the world model's own default).
    shared_world_model_noise: False. True: the G rollouts of a group draw the same world-model noise
        (common random numbers), so reward differences within a group come from the policy's actions. On
        the demo's models, sharing the noise left 11 % of the within-group reward variance
        (bench/reward_signal.py): with independent noise the advantages mostly credit world-model noise.
        In-process imagination only.
    context_frames: 1 recorded frame given to the world model as the start (more: history frames).
    reward: "probability" | "binary", see the module docstring. early_termination: True.
    judge_disagreement: 1.0. With several judges (`prophrl train --judge J1 J2 ...`), a clip's reward is their mean
        probability minus this times their standard deviation (prophrl_worldmodel.judge_ensemble), so clips the
        judges disagree on are not rewarded; no effect with one judge.
    variant: "fa_grpo" (one ratio per chunk) | "fa_grpo_chunk_mean" (per chunk, length-normalised) |
        "fa_grpo_element" (one ratio per action element) | "flow_grpo" (Flow-GRPO's per-step ratio of
        element-averaged log-densities, the ablation baseline); see prophrl_trainer.fa_grpo.
    use_flowscale: True; flowscale: its weights (FlowScaleConfig).
    mixed_precision: "none" | "bf16": the policy's networks run under bf16 autocast in rollouts and updates
        alike (VLAPolicy.compute_dtype); the flow, the SDE log-probabilities and the PPO ratio stay float32, and
        the ratio at an update's first minibatch is 1 (tests). For GPUs; on a CPU bf16 is usually slower.
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
    milestone_every: int = 20
    eval_every: int = 10
    eval_states: int = 8
    eval_rollouts: int = 1
    validation_states: int = 0
    seed: int = 0
    imagination_steps: int = 0
    shared_world_model_noise: bool = False
    context_frames: int = 1
    reward: str = "probability"
    early_termination: bool = True
    judge_disagreement: float = DEFAULT_DISAGREEMENT
    variant: str = "fa_grpo"
    use_flowscale: bool = True
    fa_grpo: FAGRPOConfig = FAGRPOConfig()
    flowscale: FlowScaleConfig = FlowScaleConfig()
    mixed_precision: str = "none"

    def __post_init__(self):
        require_finite_numbers(self, "RL config")
        for key in ("group_size", "states_per_update", "chunks_per_rollout", "denoising_steps", "ppo_epochs",
                    "updates", "checkpoint_every", "keep_checkpoints", "eval_states", "eval_rollouts",
                    "context_frames"):
            if getattr(self, key) < 1:
                raise ConfigError(f"RL config: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("minibatch_size", "eval_every", "imagination_steps", "seed", "milestone_every",
                    "validation_states"):
            if getattr(self, key) < 0:
                raise ConfigError(f"RL config: {key} must be >= 0, got {getattr(self, key)}")
        if self.group_size < 2:
            raise ConfigError("RL config: group_size must be >= 2 (advantages are relative within a group)")
        if not (self.noise_level > 0 and self.learning_rate > 0 and self.max_grad_norm > 0 and self.weight_decay >= 0
                and self.target_kl >= 0):
            raise ConfigError("RL config: need noise_level > 0, learning_rate > 0, max_grad_norm > 0, "
                              "weight_decay >= 0 and target_kl >= 0")
        if self.validation_states and not self.eval_every:
            raise ConfigError("RL config: validation_states > 0 needs eval_every > 0 (how often the held-out "
                              "states are evaluated)")
        if self.judge_disagreement < 0:
            raise ConfigError(f"RL config: judge_disagreement must be >= 0, got {self.judge_disagreement}")
        if self.reward not in REWARD_MODES:
            raise ConfigError(f"RL config: reward must be one of {REWARD_MODES}, got {self.reward!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"RL config: mixed_precision must be one of {MIXED_PRECISION}, "
                              f"got {self.mixed_precision!r}")
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
            config = dataclass_from_mapping(cls, data, source, complete=complete, added_later=ADDED_LATER)
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


# Fields that configs saved before them lack (they get the default).
ADDED_LATER = ("milestone_every", "mixed_precision", "judge_disagreement", "validation_states")


# What a run directory (`prophrl train --out`) holds; a run is resumed in it, never replaced.
RL_RUN_OUTPUT = OutputKind("FA-GRPO run directory", frozenset({"checkpoints", "tensorboard", "progress.jsonl",
                                                                "progress.jsonl.tmp", SELECTED_POLICY_DIR,
                                                                MINED_CLIPS_DIR}),
                           prefixes=(f".{SELECTED_POLICY_DIR}.", f"..{SELECTED_POLICY_DIR}."))  # its temporaries
