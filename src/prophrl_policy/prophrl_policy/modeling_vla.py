"""VLA policy: image + instruction + proprio state -> action chunk from a pi0-style flow-matching head.

Pure torch, no ROS. LeRobot-style API: `compute_loss` for SFT, `predict_action_chunk` for rollouts
(ODE, or Flow-GRPO's SDE with per-step log-probabilities), `sde_log_probs` to recompute those
log-probabilities under the current weights (what FA-GRPO differentiates), `save_pretrained` /
`from_pretrained` with safetensors + JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prophrl_common.atomic_io import atomic_directory
from prophrl_common.weights import load_safetensors, save_finite_safetensors
from prophrl_common.config_io import ConfigError
from prophrl_common.frames import resize_frames
from prophrl_nn import flow_matching as fm
from prophrl_nn.flow_matching import SamplerConfig
from prophrl_nn.text_encoder import HashedBagOfWords
from prophrl_policy import decoder_attention
from prophrl_policy.configuration_vla import VLAConfig
from prophrl_policy.embodiment import EMBODIMENT_NAME, Embodiment
from prophrl_policy.encoders import FrozenSentenceEncoder, HFVisionTokens, MobileNetTokens, SmallCNN
from prophrl_policy.transforms import NormStats

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
STATS_NAME = "norm_stats.json"
# Every file save_pretrained writes (embodiment.json when the embodiment is known).
CHECKPOINT_FILES = frozenset({CONFIG_NAME, STATS_NAME, WEIGHTS_NAME, EMBODIMENT_NAME})


def camera_view(frames: torch.Tensor, config: VLAConfig) -> torch.Tensor:
    """What the policy sees of (B, H, W, 3) uint8 camera frames: (B, 3, S, S) float in [0, 1] at
    config.image_size. With config.camera_size the frames are first reduced to camera_size x camera_size by
    prophrl_common.frames.resize_frames, the reduction Prophet's training frames went through (frames already
    at camera_size, such as Prophet's, stay as they are); then they are resized bilinearly to image_size."""
    if config.camera_size and frames.shape[1:3] != (config.camera_size,) * 2:
        reduced = resize_frames(frames.cpu().numpy(), config.camera_size)
        frames = torch.from_numpy(reduced).to(frames.device)
    images = frames.permute(0, 3, 1, 2).float().div_(255)
    if images.shape[-2:] != (config.image_size,) * 2:
        images = nn.functional.interpolate(images, size=(config.image_size,) * 2, mode="bilinear",
                                           align_corners=False)
    return images


@dataclasses.dataclass
class Observation:
    """A batch of observations. images: (B,3,H,W) float in [0,1]; states: (B, state_dim) raw units."""

    images: torch.Tensor
    instructions: list[str]
    states: torch.Tensor

    def __post_init__(self):
        b = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (B,3,H,W), got {tuple(self.images.shape)}")
        if len(self.instructions) != b or self.states.shape[0] != b:
            raise ValueError(f"batch sizes differ: images {b}, instructions {len(self.instructions)}, "
                             f"states {self.states.shape[0]}")

    @classmethod
    def from_frames(cls, frames, instructions: list[str], states, config: VLAConfig | None = None,
                    device: torch.device | str | None = None) -> "Observation":
        """The one conversion of camera frames to the policy's input: (B, H, W, 3) uint8 RGB (numpy or torch) ->
        (B, 3, S, S) float in [0, 1] as the policy of `config` sees them (camera_view; without a config the
        frames keep their size and encode_observation resizes them); states (B, state_dim), the proprio vector
        (transforms.policy_state)."""
        pixels = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"frames must be (B, H, W, 3) uint8, got {tuple(pixels.shape)} {pixels.dtype}")
        if config is not None:
            images = camera_view(pixels.to(device), config)
        else:
            images = pixels.to(device).permute(0, 3, 1, 2).float().div_(255)
        states = torch.as_tensor(states, dtype=torch.float32).to(device)
        return cls(images, list(instructions), states)

    def repeat(self, n: int) -> "Observation":
        """Each observation n times in a row (a GRPO group shares its initial observation)."""
        return Observation(self.images.repeat_interleave(n, 0), [t for t in self.instructions for _ in range(n)],
                           self.states.repeat_interleave(n, 0))


@dataclasses.dataclass
class ChunkSample:
    """Result of predict_action_chunk. Normalised-space tensors keep what RL needs to recompute."""

    actions: torch.Tensor            # (B, H, robot_action_dim), robot units
    latents: torch.Tensor            # (B, K+1, H, action_dim), x_0 .. x_K along the denoising path
    log_probs: torch.Tensor | None   # (B, K) per-step log-probabilities (SDE mode)
    means: torch.Tensor | None       # (B, K, H, action_dim)
    stds: torch.Tensor | None        # (K,) per-step Gaussian std (std_k * sqrt(|dt_k|))


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    args = t[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class VLAPolicy(nn.Module):
    def __init__(self, config: VLAConfig, norm_stats: NormStats | None = None, load_pretrained: bool = True,
                 embodiment: Embodiment | None = None):
        super().__init__()
        self.config = config.validate()
        # None: float32 everywhere; torch.bfloat16: the networks run under autocast (_networks), not saved
        self.compute_dtype: torch.dtype | None = None
        d = config.hidden_dim
        self.norm_stats = norm_stats or NormStats.identity(config.state_dim, config.robot_action_dim)
        if self.norm_stats.state_dim != config.state_dim or self.norm_stats.action_dim != config.robot_action_dim:
            raise ConfigError(f"norm stats are for state {self.norm_stats.state_dim} / action "
                              f"{self.norm_stats.action_dim}, config needs {config.state_dim} / {config.robot_action_dim}")
        if embodiment is not None and len(embodiment.state_names) != config.state_dim:
            raise ConfigError(f"embodiment state layout has {len(embodiment.state_names)} names, "
                              f"config needs state_dim {config.state_dim}")
        # What the policy was trained for (robot, action space, state layout); None when unknown.
        self.embodiment = embodiment

        if config.vision_backbone == "small_cnn":
            self.vision = SmallCNN(d)
        elif config.vision_backbone == "mobilenet_v2":
            self.vision = MobileNetTokens(d, pretrained=load_pretrained, freeze=config.freeze_vision)
        else:
            self.vision = HFVisionTokens(d, config.backbone_path, freeze=config.freeze_vision)
        if config.text_encoder == "hashed_bow":
            self.text = HashedBagOfWords(d)
        elif config.text_encoder == "minilm":
            self.text = FrozenSentenceEncoder(d, FrozenSentenceEncoder.minilm_dir())
        else:
            self.text = FrozenSentenceEncoder(d, config.backbone_path)
        self.state_proj = nn.Sequential(nn.Linear(config.state_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.obs_type = nn.Parameter(torch.zeros(3, d))  # vision / text / state

        self.action_in = nn.Linear(config.action_dim, d)
        self.time_mlp = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, d))
        self.action_pos = nn.Parameter(torch.randn(config.horizon, d) * 0.02)
        layer = nn.TransformerDecoderLayer(d, config.num_heads, 4 * d, config.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.denoiser = nn.TransformerDecoder(layer, config.num_layers)
        decoder_attention.check_supported(self.denoiser)
        self.action_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.action_dim))
        nn.init.zeros_(self.action_out[1].weight)
        nn.init.zeros_(self.action_out[1].bias)

    # ----- observation -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _networks(self):
        """The context of the networks' forward passes: autocast to compute_dtype when it is set (bf16 on a GPU);
        their outputs are returned as float32, so the flow and the SDE log-probabilities stay in float32.

        Under autocast, attention's inference fast path (taken without gradients) runs softmax in the low
        precision while the differentiable path keeps it in float32: the log-probabilities of a rollout and
        of the update that recomputes them would differ by several percent in the PPO ratio. So with a
        compute_dtype both take the same path."""
        if self.compute_dtype is None:
            yield
            return
        fast_path = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.autocast(self.action_pos.device.type, dtype=self.compute_dtype):
                yield
        finally:
            torch.backends.mha.set_fastpath_enabled(fast_path)

    def encode_observation(self, obs: Observation) -> torch.Tensor:
        """(B, N_obs, D) tokens, computed once per observation and reused by every denoising step."""
        size = self.config.image_size
        # One memory layout (NCHW contiguous): convolution kernels round differently for a channels-last view
        # (what from_frames' permute gives) than for the same images stacked into a rollout batch, and the
        # SDE log-probabilities of a rollout and of its update must agree.
        images = obs.images.to(self.action_pos.device, torch.float32).contiguous()
        if images.shape[-2:] != (size, size):
            if self.config.camera_size:
                raise ValueError(f"this policy sees camera frames reduced to {self.config.camera_size} px first: "
                                 f"pass them through Observation.from_frames with its config, got images of "
                                 f"{tuple(images.shape[-2:])} instead of {size} x {size}")
            images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        states = self.norm_stats.normalize_state(obs.states.to(self.action_pos.device, torch.float32))
        with self._networks():
            vision = self.vision(images) + self.obs_type[0]
            text = self.text(obs.instructions) + self.obs_type[1]
            state = self.state_proj(states).unsqueeze(1) + self.obs_type[2]
            tokens = torch.cat([vision, text, state], dim=1)
        return tokens.float()

    def observation_memory(self, obs_tokens: torch.Tensor) -> decoder_attention.KeysValues:
        """The denoiser's cross-attention keys and values of `obs_tokens`: the same at every denoising step of a
        chunk, so the sampling loops compute them once (decoder_attention)."""
        with self._networks():
            return decoder_attention.memory_keys_values(self.denoiser, obs_tokens)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, obs_tokens: torch.Tensor,
                 memory: decoder_attention.KeysValues | None = None) -> torch.Tensor:
        """v_theta(x_t, t, obs): x_t (B*R,H,A) normalised actions, R >= 1 rows per observation of obs_tokens (B,
        N_obs, D), sample-major; t (B*R,) in [0,1]; `memory`: observation_memory of obs_tokens, when the caller
        has it."""
        d = self.config.hidden_dim
        time = sinusoidal_embedding(t, d)
        first = self.time_mlp[0]
        with self._networks():
            # time_mlp(cat[action_in(x_t), time]), with the time half of its first layer computed once per row
            # (the same for all H action tokens) and added to every token
            hidden = (nn.functional.linear(self.action_in(x_t), first.weight[:, :d])
                      + nn.functional.linear(time, first.weight[:, d:], first.bias)[:, None])
            tokens = self.time_mlp[2](self.time_mlp[1](hidden)) + self.action_pos
            if self.training and self.config.dropout > 0:  # decode applies no dropout
                out = self.denoiser(tokens, obs_tokens.repeat_interleave(x_t.shape[0] // obs_tokens.shape[0], 0))
            else:
                if memory is None:
                    memory = decoder_attention.memory_keys_values(self.denoiser, obs_tokens)
                out = decoder_attention.decode(self.denoiser, tokens, memory)
            v = self.action_out(out)
        return v.float()

    # ----- actions <-> model space ----------------------------------------------------------------
    def to_model_space(self, actions: torch.Tensor) -> torch.Tensor:
        """(B,H,robot_dim) robot units -> (B,H,action_dim) normalised, zero-padded."""
        normalised = self.norm_stats.normalize_action(actions)
        pad = self.config.action_dim - self.config.robot_action_dim
        return nn.functional.pad(normalised, (0, pad)) if pad else normalised

    def to_robot_space(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_stats.unnormalize_action(x[..., : self.config.robot_action_dim])

    @property
    def action_mask(self) -> torch.Tensor:
        """1 for the dimensions the robot executes, 0 for padding."""
        mask = torch.zeros(self.config.action_dim, device=self.action_pos.device)
        mask[: self.config.robot_action_dim] = 1
        return mask

    # ----- training ----------------------------------------------------------------------------
    def sample_time(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ Beta(alpha, beta) scaled into (0.001, 1] (pi0)."""
        alpha, beta = self.config.time_beta_alpha, self.config.time_beta_beta
        if beta == 1.0:  # Beta(alpha, 1) has CDF x^alpha: inverse-transform sampling keeps the seeded stream
            u = fm.seeded_draw(torch.rand, (batch,), generator, self.action_pos.device) ** (1.0 / alpha)
        else:
            u = torch.distributions.Beta(alpha, beta).sample((batch,))
        return (u * 0.999 + 0.001).to(self.action_pos.device)

    def compute_loss(self, obs: Observation, actions: torch.Tensor, generator: torch.Generator | None = None):
        """Flow-matching loss: x_t = t eps + (1 - t) a, target u = eps - a (robot dims only)."""
        if actions.shape[1:] != (self.config.horizon, self.config.robot_action_dim):
            raise ValueError(f"actions must be (B, {self.config.horizon}, {self.config.robot_action_dim}), "
                             f"got {tuple(actions.shape)}")
        a = self.to_model_space(actions.to(self.action_pos.device, torch.float32))
        noise = fm.seeded_draw(torch.randn, a.shape, generator, a.device)
        t = self.sample_time(a.shape[0], generator)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
        return self.velocity_loss(obs, x_t, t, noise - a)

    def velocity_loss(self, obs: Observation, x_t: torch.Tensor, t: torch.Tensor,
                      target: torch.Tensor) -> torch.Tensor:
        """Mean squared error of v(x_t, t, obs) against `target` (B, H, action_dim) over the robot's dimensions; x_t
        (B, H, action_dim) in model space, t (B,)."""
        v = self.velocity(x_t, t, self.encode_observation(obs))
        err = ((v - target) ** 2) * self.action_mask
        return err.sum() / (self.action_mask.sum() * target.shape[0] * target.shape[1])

    # ----- sampling ----------------------------------------------------------------------------
    def sampler_with(self, num_steps: int = 0, noise_level: float = 0.0) -> SamplerConfig:
        """The sampler this policy was saved with, with num_steps / noise_level replaced where given (0: keep)."""
        saved = self.config.sampler
        return SamplerConfig(num_steps or saved.num_steps, noise_level or saved.noise_level)

    @torch.no_grad()
    def predict_action_chunk(self, obs: Observation, mode: str = "ode", sampler: SamplerConfig | None = None,
                             generator: torch.Generator | None = None,
                             noise: torch.Tensor | None = None) -> ChunkSample:
        """Sample a chunk with `sampler` (default: the one this policy was trained / saved with). mode="sde" also
        returns per-step log-probs/means (Flow-GRPO's SDE). `noise`: the path's start x_0 (B, H, action_dim), drawn
        from `generator` when not given."""
        if mode not in ("ode", "sde"):
            raise ValueError(f"mode must be 'ode' or 'sde', got {mode!r}")
        sampler = sampler or self.config.sampler
        k_steps, noise_level = sampler.num_steps, sampler.noise_level
        obs_tokens = self.encode_observation(obs)
        memory = self.observation_memory(obs_tokens)
        b = obs_tokens.shape[0]
        shape = (b, self.config.horizon, self.config.action_dim)
        if noise is None:
            x = fm.seeded_draw(torch.randn, shape, generator, obs_tokens.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}")
        else:
            x = noise.to(obs_tokens.device, torch.float32)
        grid = fm.sigmas(k_steps).tolist()
        latents, log_probs, means, stds = [x], [], [], []
        for k in range(k_steps):
            sigma, sigma_next = grid[k], grid[k + 1]
            v = self.velocity(x, torch.full((b,), sigma, device=x.device), obs_tokens, memory)
            if mode == "ode":
                x = fm.euler_step(x, v, sigma, sigma_next)
            else:
                step = fm.sde_step(x, v, sigma, sigma_next, noise_level, generator)
                x = step.sample
                log_probs.append(fm.gaussian_log_prob(x, step.mean, step.std, self.action_mask))
                means.append(step.mean)
                stds.append(step.std)
            latents.append(x)
        return ChunkSample(
            actions=self.to_robot_space(x),
            latents=torch.stack(latents, dim=1),
            log_probs=torch.stack(log_probs, dim=1) if log_probs else None,
            means=torch.stack(means, dim=1) if means else None,
            stds=torch.stack(stds) if stds else None,
        )

    def sde_log_probs(self, obs: Observation, latents: torch.Tensor, sampler: SamplerConfig | None = None,
                      obs_tokens: torch.Tensor | None = None):
        """Per-step log p(x_{k+1} | x_k) of a stored denoising path under the CURRENT weights.

        latents: (B, K+1, H, A) from predict_action_chunk(mode="sde", sampler=sampler). Returns (log_probs (B,K),
        means (B,K,H,A), stds (K,)), differentiable w.r.t. the policy parameters. The path is given, so the K
        steps' velocities are one batch of B * K rows (sample-major) through the denoiser.
        """
        sampler = sampler or self.config.sampler
        k_steps, noise_level = latents.shape[1] - 1, sampler.noise_level
        if k_steps != sampler.num_steps:
            raise ValueError(f"the path has {k_steps} denoising steps, the sampler {sampler.num_steps}")
        if obs_tokens is None:
            obs_tokens = self.encode_observation(obs)
        b = latents.shape[0]
        grid = fm.sigmas(k_steps).tolist()
        mask = self.action_mask
        times = torch.tensor(grid[:k_steps], device=latents.device).repeat(b)
        velocities = self.velocity(latents[:, :k_steps].flatten(0, 1), times, obs_tokens,
                                   self.observation_memory(obs_tokens)).unflatten(0, (b, k_steps))
        log_probs, means, stds = [], [], []
        for k in range(k_steps):
            sigma, sigma_next = grid[k], grid[k + 1]
            x = latents[:, k]
            mean, std = fm.sde_mean(x, velocities[:, k], sigma, sigma_next, noise_level)
            log_probs.append(fm.gaussian_log_prob(latents[:, k + 1], mean, std, mask))
            means.append(mean)
            stds.append(std)
        return torch.stack(log_probs, 1), torch.stack(means, 1), torch.tensor(stds)

    def select_action(self, obs: Observation) -> torch.Tensor:
        """First action of a freshly predicted chunk (ODE): (B, robot_action_dim)."""
        return self.predict_action_chunk(obs).actions[:, 0]

    # ----- persistence -------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json + norm_stats.json + model.safetensors (+ embodiment.json when known), written atomically
        (temp dir + rename); other entries of an existing `directory` (a TensorBoard log) stay. Non-finite weights
        raise NonFiniteError and write nothing."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            (tmp / CONFIG_NAME).write_text(self.config.to_json())
            (tmp / STATS_NAME).write_text(self.norm_stats.to_json())
            if self.embodiment is not None:
                (tmp / EMBODIMENT_NAME).write_text(self.embodiment.to_json())
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_finite_safetensors(state, tmp / WEIGHTS_NAME, {"format": "pt", "policy": "prophrl_vla"},
                                    f"policy weights for {directory}")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> "VLAPolicy":
        directory = Path(directory)
        for name in (CONFIG_NAME, STATS_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise ConfigError(f"{directory}: not a policy checkpoint (missing {name})")
        config = VLAConfig.from_json_file(directory / CONFIG_NAME)
        stats = NormStats.from_json_file(directory / STATS_NAME)
        embodiment = (Embodiment.from_json_file(directory / EMBODIMENT_NAME)
                      if (directory / EMBODIMENT_NAME).is_file() else None)  # None: saved before it was recorded
        policy = cls(config, stats, load_pretrained=False, embodiment=embodiment)
        state = load_safetensors(directory / WEIGHTS_NAME, map_location)
        try:
            missing, unexpected = policy.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ConfigError(f"{directory / WEIGHTS_NAME}: weights do not match the config: "
                              f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from exc
        if missing or unexpected:
            raise ConfigError(f"{directory / WEIGHTS_NAME}: weights do not match the config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        for name, tensor in state.items():
            if not torch.isfinite(tensor).all():
                raise ConfigError(f"{directory / WEIGHTS_NAME}: tensor {name} contains NaN/inf")
        return policy
