"""Prophet configuration: named configs in a registry, saved as JSON beside the weights.

A config describes the clip geometry (image size, frames per clip, action chunk layout), the
conditioning (history memory scales, action frames), the sampler, and either a from-scratch tiny
architecture (the ``vae_*`` and transformer fields) or a local pretrained diffusers model
(``pretrained_path``), in which case the architecture is read from that model's own configs and
the from-scratch fields are not used.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prophrl_common.chunks import ARM_ACTION_DIM
from prophrl_common.config_io import (ConfigError, dataclass_from_json_file, dataclass_to_json,
                                      require_finite_numbers)

MAX_ARMS = 2
FLOW_SOURCES = ("noise", "start_frame")
# full: every weight trains. lora: LoRA adapters in the transformer are the only trainable weights
# (adapting a trained Prophet). lora+conditioning: LoRA plus Prophet's own conditioning layers, which
# a generic video model does not have and must learn in full (turning a Wan checkpoint into Prophet).
FINETUNE_MODES = ("full", "lora", "lora+conditioning")


@dataclasses.dataclass(frozen=True)
class ProphetConfig:
    name: str = "tiny"
    # Clip geometry. One call predicts frames_per_clip frames from an action chunk of
    # frames_per_clip * actions_per_frame steps (the actions executed between consecutive frames).
    image_size: int = 64
    frames_per_clip: int = 4
    actions_per_frame: int = 5
    action_dim: int = ARM_ACTION_DIM * MAX_ARMS   # single-arm data zero-pads the second arm
    # History memory, FramePack-style: (frames, pool_t, pool_h, pool_w) per scale, most recent
    # frames first. Each scale's latents are 3D-average-pooled with that kernel; the sum of the
    # frame counts is the history length.
    history_scales: tuple[tuple[int, ...], ...] = ((2, 1, 2, 2), (2, 2, 4, 4), (4, 4, 8, 8))
    # Action frames (rendered end-effector poses): their latents are pooled to a grid x grid map per frame.
    use_action_frames: bool = True
    action_frame_grid: int = 4
    # Rectified flow: t = 1 noise, t = 0 data; sigma' = shift * sigma / (1 + (shift - 1) * sigma)
    # (Wan / SD3 time shift, 1 = none) for both training times and the sampling grid.
    num_inference_steps: int = 10
    timestep_shift: float = 1.0
    # Residual prediction: the flow generates each future latent's change from the start frame's latent,
    # per channel divided by residual_std (fitted on training clips), so "nothing moves" is the zero
    # sample and the model's capacity goes to what changes. False: the future latents themselves.
    predict_residual: bool = False
    # Where the flow starts (t = 1). "noise": N(0, I), as in video diffusion. "start_frame": the start frame
    # (its latent repeated over the clip; the zero change with predict_residual) plus source_noise * N(0, I),
    # in normalised latent units: an interpolant from "nothing moves" to the future clip, so copying the
    # start frame is where sampling begins and the denoiser learns only what changes.
    flow_source: str = "noise"
    source_noise: float = 0.2
    # Motion-weighted loss: each latent position's flow error is weighted 1 + motion_loss_weight * m, with m that
    # position's mean absolute latent change from the start frame divided by the clip's mean change, so
    # capacity goes where the arm and objects move rather than to the static scene. 0: the plain mean.
    motion_loss_weight: float = 0.0
    # Classifier-free guidance on the actions. action_dropout: the share of training clips conditioned on no
    # actions (normalised actions zeroed, action frames masked as uncalibrated), so the model also learns the
    # clip that the start frame and history predict whatever the actions. action_guidance g: sampling follows
    # v_none + g * (v_actions - v_none), which for g > 1 makes the commanded motion count for more than the
    # motion the scene suggests; 1 is the plain action-conditioned velocity (one pass per step, not two).
    action_dropout: float = 0.0
    action_guidance: float = 1.0
    # From-scratch VAE (diffusers AutoencoderKL), one down block per entry: spatial compression
    # 2 ** (len(vae_channels) - 1). Frames are encoded one by one (no temporal compression).
    vae_channels: tuple[int, ...] = (8, 16, 32)
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 8
    vae_latent_channels: int = 4
    vae_kl_weight: float = 1e-4
    # Colour-weighted VAE reconstruction: each pixel's L1 is weighted 1 + vae_colour_weight * c, c = 1 where the
    # pixel is saturated and bright (HSV saturation > 0.45 and value > 0.25: the small coloured objects a task is
    # about, against grey tables, walls and arms) and 0 elsewhere, divided by the mean weight. 0: the plain mean,
    # under which a small 4-channel VAE reconstructs a coloured cube as a grey dot (README: what W = 50 changes).
    vae_colour_weight: float = 0.0
    # From-scratch denoiser (diffusers WanTransformer3DModel).
    patch_size: tuple[int, ...] = (1, 2, 2)
    num_layers: int = 4
    num_heads: int = 2
    head_dim: int = 32
    ffn_dim: int = 256
    freq_dim: int = 64
    context_dim: int = 64          # width of the history / action tokens (Wan's text_dim)
    # Pretrained base: a local directory in diffusers layout, vae/ (AutoencoderKL or AutoencoderKLWan)
    # and transformer/ (WanTransformer3DModel). No hub access.
    pretrained_path: str = ""
    finetune: str = "full"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    @property
    def action_horizon(self) -> int:
        return self.frames_per_clip * self.actions_per_frame

    @property
    def history_length(self) -> int:
        return sum(scale[0] for scale in self.history_scales)

    @property
    def vae_compression(self) -> int:
        """Spatial compression of the from-scratch VAE."""
        return 2 ** (len(self.vae_channels) - 1)

    def validate(self, source: str = "ProphetConfig") -> "ProphetConfig":
        require_finite_numbers(self, source)
        for key in ("image_size", "frames_per_clip", "actions_per_frame", "action_dim", "action_frame_grid",
                    "num_inference_steps", "vae_layers_per_block", "vae_norm_groups", "vae_latent_channels",
                    "num_layers", "num_heads", "head_dim", "ffn_dim", "freq_dim", "context_dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: {key} must be positive")
        if self.action_dim % ARM_ACTION_DIM:
            raise ConfigError(f"{source}: action_dim must be a multiple of {ARM_ACTION_DIM} (one step per end effector)")
        if self.timestep_shift <= 0:
            raise ConfigError(f"{source}: timestep_shift must be positive")
        if self.flow_source not in FLOW_SOURCES:
            raise ConfigError(f"{source}: flow_source must be one of {FLOW_SOURCES}, got {self.flow_source!r}")
        if self.source_noise <= 0:
            raise ConfigError(f"{source}: source_noise must be positive")
        if self.motion_loss_weight < 0:
            raise ConfigError(f"{source}: motion_loss_weight must be >= 0")
        if not 0 <= self.action_dropout < 1:
            raise ConfigError(f"{source}: action_dropout must be in [0, 1)")
        if self.action_guidance < 0:
            raise ConfigError(f"{source}: action_guidance must be >= 0")
        if self.vae_kl_weight < 0:
            raise ConfigError(f"{source}: vae_kl_weight must be >= 0")
        if self.vae_colour_weight < 0:
            raise ConfigError(f"{source}: vae_colour_weight must be >= 0")
        if not self.history_scales:
            raise ConfigError(f"{source}: history_scales needs at least one scale")
        for scale in self.history_scales:
            if len(scale) != 4 or min(scale) <= 0:
                raise ConfigError(f"{source}: each history scale is (frames, pool_t, pool_h, pool_w), all positive; "
                                  f"got {scale}")
            if scale[0] % scale[1]:
                raise ConfigError(f"{source}: history scale {scale}: frames must be a multiple of pool_t")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ConfigError(f"{source}: patch_size must be three positive integers (t, h, w)")
        if self.patch_size[0] != 1:
            raise ConfigError(f"{source}: patch_size[0] must be 1 (frames are predicted one latent frame each)")
        if not self.vae_channels or any(c % self.vae_norm_groups for c in self.vae_channels):
            raise ConfigError(f"{source}: vae_channels must be non-empty multiples of vae_norm_groups")
        if self.head_dim % 2:
            raise ConfigError(f"{source}: head_dim must be even (rotary embeddings)")
        if self.finetune not in FINETUNE_MODES:
            raise ConfigError(f"{source}: finetune must be one of {FINETUNE_MODES}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"{source}: lora_alpha must be positive")
        if self.finetune != "full" and (self.lora_rank <= 0 or not self.lora_target_modules):
            raise ConfigError(f"{source}: finetune={self.finetune} needs lora_rank > 0 and lora_target_modules")
        if not self.pretrained_path:
            self.check_latent_geometry(self.vae_compression, source)
        return self

    def check_latent_geometry(self, vae_compression: int, source: str = "ProphetConfig") -> None:
        """The image must tile into VAE latents, patches and every history pooling window."""
        if self.image_size % vae_compression:
            raise ConfigError(f"{source}: image_size {self.image_size} is not a multiple of the VAE's "
                              f"compression {vae_compression}")
        latent = self.image_size // vae_compression
        for window in [self.patch_size[1:]] + [scale[2:] for scale in self.history_scales]:
            if any(latent % w for w in window):
                raise ConfigError(f"{source}: the {latent}x{latent} latent grid does not tile into {tuple(window)} "
                                  f"(patch_size / history_scales)")

    def to_json(self) -> str:
        return dataclass_to_json(self)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ProphetConfig":
        return dataclass_from_json_file(cls, path, "Prophet config", added_later=ADDED_LATER)


# Fields that configs saved before them lack (they get the default: the behaviour they were saved with).
ADDED_LATER = ("predict_residual", "flow_source", "source_noise", "motion_loss_weight", "vae_colour_weight",
               "action_dropout", "action_guidance")


PROPHET_CONFIGS: dict[str, ProphetConfig] = {
    # Trains on a 2-core CPU: 64 px, 4x VAE -> 16x16x4 latents, 8x8 tokens per frame.
    "tiny": ProphetConfig(),
    # The demo's world model: 32 px with a 2x VAE (16x16x4 latents, the same 8x8 tokens per frame as
    # tiny). At 32 px a 4x VAE caps reconstruction below the copy-last-frame baseline (about 23 dB after
    # 600 VAE steps vs. 29.8 dB for this one after 2000); one clip = 2 frames x 5 actions = one chunk of
    # the tiny policy (horizon 10).
    "tiny_32px": ProphetConfig(name="tiny_32px", image_size=32, frames_per_clip=2, actions_per_frame=5,
                               vae_channels=(8, 16)),
    # tiny_32px whose flow starts at the start frame (plus 0.5 std of noise) and samples a clip in one Euler
    # step: the shipped pretrained Prophet's config (prophrl_worldmodel.pretrained). Trained 6000 steps on
    # one demo's data it beats copy-last-frame on PSNR, SSIM and flow EPE at 11 of 12 predicted frames, where
    # tiny_32px at 10 steps loses on SSIM and EPE; one step is also its best step count.
    "tiny_32px_start_frame": ProphetConfig(name="tiny_32px_start_frame", image_size=32, frames_per_clip=2,
                                           actions_per_frame=5, vae_channels=(8, 16), flow_source="start_frame",
                                           source_noise=0.5, num_inference_steps=1),
    # tiny_32px_start_frame at 64 px: a 4x VAE with 8 latent channels keeps the 16x16 latent grid (8x8 tokens
    # per frame), so the denoiser costs what the 32 px one does, while the cube covers 4-6 pixels instead of 1-2.
    "tiny_64px_start_frame": ProphetConfig(name="tiny_64px_start_frame", image_size=64, frames_per_clip=2,
                                           actions_per_frame=5, vae_channels=(8, 16, 32), vae_latent_channels=8,
                                           flow_source="start_frame", source_noise=0.5, num_inference_steps=1),
    # A local diffusers Wan checkpoint (e.g. Wan2.1-T2V-1.3B-Diffusers: AutoencoderKLWan 8x spatial,
    # 16 latent channels; WanTransformer3DModel) adapted with LoRA. pretrained_path must be given.
    "base": ProphetConfig(name="base", image_size=256, frames_per_clip=10, actions_per_frame=2,
                          history_scales=((2, 1, 2, 2), (2, 2, 4, 4), (4, 4, 8, 8)), action_frame_grid=8,
                          num_inference_steps=20, timestep_shift=3.0, finetune="lora+conditioning",
                          lora_rank=32, lora_alpha=32.0),
}


def get_prophet_config(name: str, **overrides) -> ProphetConfig:
    if name not in PROPHET_CONFIGS:
        raise ConfigError(f"unknown Prophet config '{name}'; available: {sorted(PROPHET_CONFIGS)}")
    try:
        config = dataclasses.replace(PROPHET_CONFIGS[name], **overrides)
    except TypeError as exc:
        raise ConfigError(f"Prophet config '{name}': {exc}") from exc
    return config.validate(name)
