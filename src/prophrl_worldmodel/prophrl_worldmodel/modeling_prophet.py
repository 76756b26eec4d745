"""Prophet: an action-conditioned latent video flow-matching model (pure torch, no ROS).

Pieces (all diffusers / peft classes, no global patching):
- VAE: ``AutoencoderKL`` (from scratch: ``ProphetConfig.vae_*``, 4x spatial for ``tiny``) or a
  pretrained ``AutoencoderKL`` / ``AutoencoderKLWan``. Every frame is encoded on its own, so one
  latent frame per video frame and no temporal compression: the paper's Wan VAE compresses 4x in
  time, but per-frame latents keep the start frame, each predicted frame and the history buffer
  aligned with the frames the policy sees, and a causal Wan VAE encodes a one-frame video exactly
  like the first frame of a clip. Latents are normalised per channel (``latent_mean/std`` buffers).
- Denoiser (built in ``prophet_modules``): ``ActionConditionedWanTransformer``, a ``WanTransformer3DModel``
  whose forward takes one extra input, an embedding added to the diffusion timestep embedding. Its input video is the clean
  start-frame latent followed in time by the F noisy future latents (time concatenation, so the
  start frame shares the rotary positions and self-attention of the clip, and a pretrained Wan keeps
  its input channels); the velocity of frame 0 is discarded.
- Conditioning (``ProphetConditioning``), all carried through Wan's own inputs:
  * history memory: the latents of the last ``history_length`` frames (before the start frame),
    split into scales (most recent first) and 3D-average-pooled per scale (FramePack-style: recent
    frames fine, older frames coarse); each pooled cell becomes a token (linear + learned position).
  * action tokens: one token per predicted frame from the actions executed before it.
  History and action tokens are Wan's cross-attention context (``encoder_hidden_states``), so every
  transformer block attends to them as extra keys/values.
  * dual action conditioning added to the timestep embedding: MLP(flatten(action chunk)) and, where
    the camera calibration is known, MLP(pooled VAE latents of the rendered action frames), masked
    per sample. Both MLPs end in a zero-initialised layer, so a pretrained Wan starts unchanged.

Training recipe (tiny, from scratch): ``vae_loss`` steps, then ``fit_latent_statistics`` (and
``fit_residual_statistics`` with ``predict_residual``), then ``training_loss`` steps on ``denoiser_parameters()`` (the VAE is frozen inside ``training_loss``).
Frames everywhere are (..., H, W, 3) RGB in [0, 255], uint8 or float, numpy or torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from prophrl_common.atomic_io import atomic_directory
from prophrl_common.chunks import ARM_ACTION_DIM
from prophrl_common.weights import load_safetensors, save_finite_safetensors
from prophrl_common.config_io import ConfigError
from prophrl_common.frames import resize_images
from prophrl_nn import flow_matching
from prophrl_worldmodel.configuration_prophet import ProphetConfig
from prophrl_worldmodel.prophet_modules import (ProphetConditioning, build_from_scratch,
                                                 initial_latent_statistics, load_pretrained_base, vae_compression)

CONFIG_NAME = "prophet_config.json"
WEIGHTS_NAME = "model.safetensors"
ADAPTER_NAME = "adapter.safetensors"
TIMESTEP_SCALE = 1000.0  # Wan embeds timesteps in [0, 1000]
ArrayLike = np.ndarray | torch.Tensor
MIN_ACTION_STD = 1e-3    # action dimensions that never move must not blow up when normalised
COLOUR_MIN_SATURATION = 0.45  # vae_colour_weight's coloured pixels: HSV saturation and value above these
COLOUR_MIN_VALUE = 0.25


@dataclasses.dataclass
class ProphetBatch:
    """One training batch. Frames are RGB in [0, 255] (uint8 or float), numpy or torch.

    history_frames (B, T, H, W, 3), oldest first, the frames before current_frame (T may be 0);
    current_frame (B, H, W, 3); actions (B, horizon, action_dim or 7 per arm: zero-padded);
    future_frames (B, F, H, W, 3); action_frames (B, F, H, W, 3) rendered end-effector poses at the
    future frames, optional; calibrated (B,) bool, whether a sample's action frames are valid
    (default: all, when action_frames is given).
    """

    history_frames: ArrayLike
    current_frame: ArrayLike
    actions: ArrayLike
    future_frames: ArrayLike
    action_frames: ArrayLike | None = None
    calibrated: ArrayLike | None = None

    @classmethod
    def coerce(cls, batch: "ProphetBatch | Mapping") -> "ProphetBatch":
        if isinstance(batch, cls):
            return batch
        if isinstance(batch, Mapping):
            unknown = sorted(set(batch) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"unknown batch key(s) {unknown}")
            return cls(**batch)
        raise TypeError(f"batch must be a ProphetBatch or a mapping, got {type(batch).__name__}")


@dataclasses.dataclass(frozen=True)
class VAELoss:
    loss: torch.Tensor            # (colour-weighted) reconstruction + kl_weight * kl, what to backpropagate
    reconstruction: torch.Tensor  # plain mean absolute error in [-1, 1] pixel units
    kl: torch.Tensor              # mean KL to N(0, I) per latent element


@dataclasses.dataclass(frozen=True)
class _Conditions:
    start_latent: torch.Tensor      # (B, C, 1, h, w)
    context: torch.Tensor           # (B, N, context_dim)
    time_embedding: torch.Tensor    # (B, inner_dim)


class Prophet(nn.Module):
    def __init__(self, config: ProphetConfig):
        super().__init__()
        config = config.validate()
        if config.pretrained_path:
            self.vae, self.transformer = load_pretrained_base(Path(config.pretrained_path))
        else:
            self.vae, self.transformer = build_from_scratch(config)
        self.is_wan_vae = isinstance(self.vae, AutoencoderKLWan)
        self.latent_channels = self.transformer.config.in_channels
        vae_channels = self.vae.config.z_dim if self.is_wan_vae else self.vae.config.latent_channels
        if vae_channels != self.latent_channels or self.transformer.config.out_channels != self.latent_channels:
            raise ConfigError(f"VAE latents have {vae_channels} channels, the transformer takes "
                              f"{self.latent_channels} in / {self.transformer.config.out_channels} out")
        if tuple(self.transformer.config.patch_size) != tuple(config.patch_size):
            config = dataclasses.replace(config, patch_size=tuple(self.transformer.config.patch_size))
        self.vae_compression = vae_compression(self.vae)
        config.check_latent_geometry(self.vae_compression, config.name)
        self.config = config.validate()
        self.latent_size = config.image_size // self.vae_compression

        mean, std = initial_latent_statistics(self.vae, self.latent_channels)
        self.register_buffer("latent_mean", mean)
        self.register_buffer("latent_std", std)
        self.register_buffer("action_mean", torch.zeros(config.action_dim))
        self.register_buffer("action_std", torch.ones(config.action_dim))
        if config.predict_residual:
            self.register_buffer("residual_std", torch.ones(self.latent_channels))
        inner_dim = self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim
        self.conditioning = ProphetConditioning(config, self.latent_channels, self.latent_size, inner_dim,
                                                self.transformer.config.text_dim)
        if config.finetune != "full":
            self._attach_lora()

    # ----- fine-tuning ---------------------------------------------------------------------------
    def configure_finetuning(self, finetune: str, **lora_fields) -> "Prophet":
        """Switch a full model (e.g. a trained Prophet loaded for few-shot adaptation) to a LoRA mode.

        lora_fields override lora_rank / lora_alpha / lora_target_modules. Returns self.
        """
        if self.config.finetune != "full":
            raise ConfigError(f"LoRA adapters are already attached (finetune={self.config.finetune})")
        unknown = sorted(set(lora_fields) - {"lora_rank", "lora_alpha", "lora_target_modules"})
        if unknown:
            raise ConfigError(f"configure_finetuning: unknown field(s) {unknown}")
        self.config = dataclasses.replace(self.config, finetune=finetune, **lora_fields).validate()
        self.conditioning.config = self.config
        if finetune != "full":
            self._attach_lora()
        return self

    def configure_motion_weighting(self, motion_loss_weight: float) -> "Prophet":
        """Set training_loss's motion_loss_weight (e.g. to adapt a trained Prophet with another weighting); the
        saved config records it. Returns self."""
        self.config = dataclasses.replace(self.config, motion_loss_weight=motion_loss_weight).validate()
        self.conditioning.config = self.config
        return self

    def configure_action_guidance(self, action_dropout: float | None = None,
                                  action_guidance: float | None = None) -> "Prophet":
        """Set the training share of clips without actions and/or the sampling guidance on the actions
        (ProphetConfig.action_dropout / action_guidance); the saved config records them. Returns self."""
        changes = {name: value for name, value in (("action_dropout", action_dropout),
                                                   ("action_guidance", action_guidance)) if value is not None}
        self.config = dataclasses.replace(self.config, **changes).validate()
        self.conditioning.config = self.config
        return self

    def _attach_lora(self) -> None:
        from peft import LoraConfig

        lora = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha,
                          target_modules=list(self.config.lora_target_modules), init_lora_weights=True)
        self.transformer.add_adapter(lora)  # peft.inject_adapter_in_model under the hood
        train_conditioning = self.config.finetune == "lora+conditioning"
        for name, param in self.named_parameters():
            is_lora = name.startswith("transformer.") and "lora_" in name
            param.requires_grad_(is_lora or (train_conditioning and name.startswith("conditioning.")))

    def denoiser_parameters(self) -> list[nn.Parameter]:
        """What training_loss trains: transformer + conditioning weights that require grad."""
        return [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("vae.")]

    def vae_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.vae.parameters() if p.requires_grad]

    # ----- frames <-> latents --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    def _pixels(self, frames, name: str, ndim: int | None = None) -> torch.Tensor:
        """[0, 255] frames (..., H, W, 3) -> float (..., 3, S, S) in [-1, 1] at the model's image size."""
        x = _as_tensor(frames)
        if (ndim is not None and x.ndim != ndim) or x.ndim < 3 or x.shape[-1] != 3:
            raise ValueError(f"{name} must have {ndim or '>= 3'} dims ending in 3 RGB channels, got {tuple(x.shape)}")
        lead = x.shape[:-3]
        x = x.to(self.device, torch.float32).reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
        size = self.config.image_size
        x = resize_images(x, size)  # as the training frames were reduced (prophrl_common.frames)
        return (x / 127.5 - 1.0).reshape(*lead, 3, size, size)

    def _resized(self, frames: torch.Tensor, name: str, ndim: int) -> torch.Tensor:
        """[0, 255] frames (..., H, W, 3) at the model's image size, still in [0, 255]."""
        if frames.shape[-3:-1] == (self.config.image_size,) * 2:
            return frames
        return ((self._pixels(frames, name, ndim) + 1) * 127.5).movedim(-3, -1)

    def _posterior(self, x: torch.Tensor):
        """(N, 3, S, S) in [-1, 1] -> the VAE's diagonal Gaussian over (N, C, h, w) latents."""
        if self.is_wan_vae:
            x = x.unsqueeze(2)  # a one-frame video
        return self.vae.encode(x).latent_dist

    def _raw_latents(self, x: torch.Tensor) -> torch.Tensor:
        z = self._posterior(x).mode()
        return z.squeeze(2) if self.is_wan_vae else z

    def _vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.is_wan_vae:
            return self.vae.decode(z.unsqueeze(2)).sample.squeeze(2)
        return self.vae.decode(z).sample

    def encode_frames(self, frames) -> torch.Tensor:
        """[0, 255] frames (B, T, H, W, 3) -> normalised latents (B, C, T, h, w) (posterior means)."""
        return self._encode_pixels(self._pixels(frames, "frames", 5))

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) in [-1, 1] -> normalised latents (B, C, T, h, w)."""
        b, t = pixels.shape[:2]
        if t == 0:
            return pixels.new_zeros(b, self.latent_channels, 0, self.latent_size, self.latent_size)
        z = self._raw_latents(pixels.flatten(0, 1))
        z = (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]
        return z.unflatten(0, (b, t)).transpose(1, 2)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, T, h, w) -> frames (B, T, S, S, 3), float in [0, 255]."""
        b, _, t = latents.shape[:3]
        z = latents.transpose(1, 2).flatten(0, 1)
        z = z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        x = self._vae_decode(z)
        frames = ((x.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1)
        return frames.unflatten(0, (b, t))

    def vae_loss(self, frames, generator: torch.Generator | None = None) -> VAELoss:
        """Autoencoder loss on frames (..., H, W, 3): L1 reconstruction of a posterior sample (colour-weighted
        with vae_colour_weight > 0) + small KL; ``reconstruction`` is the plain L1, comparable across weightings."""
        x = self._pixels(frames, "frames")
        x = x.reshape(-1, *x.shape[-3:])
        posterior = self._posterior(x)
        sample = posterior.sample(generator)
        reconstruction = self._vae_decode(sample.squeeze(2) if self.is_wan_vae else sample)
        error = (reconstruction - x).abs()
        recon = error.mean()
        kl = posterior.kl().sum() / posterior.mean.numel()
        weighted = recon
        if self.config.vae_colour_weight:
            weights = 1 + self.config.vae_colour_weight * colour_mask(x)
            weighted = (error * weights).mean() / weights.mean()
        return VAELoss(weighted + self.config.vae_kl_weight * kl, recon, kl)

    @torch.no_grad()
    def fit_latent_statistics(self, frames) -> None:
        """Set the per-channel latent normalisation from sample frames (..., H, W, 3) (after VAE training)."""
        x = self._pixels(frames, "frames")
        z = self._raw_latents(x.reshape(-1, *x.shape[-3:]))
        self.latent_mean.copy_(z.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(z.std(dim=(0, 2, 3)).clamp_min(1e-4))

    @torch.no_grad()
    def fit_action_statistics(self, actions) -> None:
        """Per-dimension action normalisation from dataset actions (..., action_dim or 7 per arm).

        Raw deltas are ~1e-2 m / rad per step: without this the action stream is drowned by biases.
        """
        a = _as_tensor(actions)
        a = self._padded_actions(a.reshape(-1, a.shape[-1]))
        if not torch.isfinite(a).all():
            raise ValueError("cannot compute action statistics from data with NaN/inf")
        self.action_mean.copy_(a.mean(0))
        self.action_std.copy_(a.std(0, unbiased=False).clamp_min(MIN_ACTION_STD))

    @torch.no_grad()
    def fit_residual_statistics(self, current_frames, future_frames) -> None:
        """Per-channel std of the latent change from a clip's start frame to its future frames (predict_residual):
        current_frames (N, H, W, 3), future_frames (N, F, H, W, 3), [0, 255]."""
        if not self.config.predict_residual:
            raise ConfigError("fit_residual_statistics needs a Prophet with predict_residual")
        start = self._encode_pixels(self._pixels(current_frames, "current_frames", 4)[:, None])
        future = self._encode_pixels(self._pixels(future_frames, "future_frames", 5))
        change = (future - start).transpose(0, 1).flatten(1)
        self.residual_std.copy_(change.std(dim=1).clamp_min(1e-3))

    def _to_residual(self, latents: torch.Tensor, start_latent: torch.Tensor) -> torch.Tensor:
        """Future latents (B, C, F, h, w) -> what the flow generates (themselves, or their scaled change)."""
        if not self.config.predict_residual:
            return latents
        return (latents - start_latent) / self.residual_std[:, None, None, None]

    def _from_residual(self, generated: torch.Tensor, start_latent: torch.Tensor) -> torch.Tensor:
        if not self.config.predict_residual:
            return generated
        return start_latent + generated * self.residual_std[:, None, None, None]

    def _flow_source(self, noise: torch.Tensor, start_latent: torch.Tensor) -> torch.Tensor:
        """Where the flow starts (t = 1) for noise ~ N(0, I) of the generated clip's shape: the noise itself, or
        (flow_source "start_frame") the start frame in the generated space plus source_noise * noise."""
        if self.config.flow_source == "noise":
            return noise
        still = self._to_residual(start_latent.expand_as(noise), start_latent)
        return still + self.config.source_noise * noise

    # ----- conditioning --------------------------------------------------------------------------
    def _padded_actions(self, a: torch.Tensor) -> torch.Tensor:
        a = a.to(self.device, torch.float32)
        if a.shape[-1] % ARM_ACTION_DIM or a.shape[-1] > self.config.action_dim:
            raise ValueError(f"actions must have {self.config.action_dim} (or 7 per arm, zero-padded) values per "
                             f"step, got {a.shape[-1]}")
        return F.pad(a, (0, self.config.action_dim - a.shape[-1]))

    def _actions(self, actions, batch: int) -> torch.Tensor:
        """(B, horizon, action_dim or 7 per arm) raw actions -> normalised, zero-padded (B, horizon, action_dim)."""
        a = _as_tensor(actions)
        horizon = self.config.action_horizon
        if a.ndim != 3 or a.shape[0] != batch or a.shape[1] != horizon:
            raise ValueError(f"actions must be ({batch}, {horizon}, {self.config.action_dim}), got {tuple(a.shape)}")
        return (self._padded_actions(a) - self.action_mean) / self.action_std

    def _history_window(self, history: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """The last history_length frames (B, L, 3, S, S); a short history repeats its oldest frame
        (the start frame when there is none)."""
        length = self.config.history_length
        if history.shape[1] == 0:
            history = start[:, None]
        history = history[:, -length:]
        missing = length - history.shape[1]
        if missing:
            history = torch.cat([history[:, :1].expand(-1, missing, -1, -1, -1), history], dim=1)
        return history

    def _action_frame_inputs(self, action_frames, calibrated, batch: int):
        """-> (pixels (B, F, 3, S, S) or None, calibrated mask (B,) float or None)."""
        if action_frames is None:
            return None, None
        if not self.config.use_action_frames:
            raise ValueError("this Prophet was configured with use_action_frames=False; pass action_frames=None")
        pixels = self._pixels(action_frames, "action_frames", 5)
        if pixels.shape[:2] != (batch, self.config.frames_per_clip):
            raise ValueError(f"action_frames must be ({batch}, {self.config.frames_per_clip}, H, W, 3), "
                             f"got {tuple(pixels.shape)}")
        if calibrated is None:
            mask = torch.ones(batch, device=self.device)
        else:
            mask = _as_tensor(calibrated).to(self.device, torch.float32).reshape(-1)
            if mask.shape[0] != batch:
                raise ValueError(f"calibrated must have {batch} entries, got {mask.shape[0]}")
        return pixels, mask

    def _conditions(self, start_latent, history_latents, actions, action_frame_latents, calibrated) -> _Conditions:
        return _Conditions(start_latent, self.conditioning.context(history_latents, actions),
                           self.conditioning.time_embedding(actions, action_frame_latents, calibrated))

    def velocity(self, noisy_latents: torch.Tensor, t: torch.Tensor, conditions: _Conditions) -> torch.Tensor:
        """v(x_t, t | start frame, history, actions) for the F future latents (B, C, F, h, w); t (B,) in [0, 1]."""
        model_input = torch.cat([conditions.start_latent, noisy_latents], dim=2)
        out = self.transformer(model_input, t * TIMESTEP_SCALE, conditions.context, conditions.time_embedding)
        return out[:, :, 1:]

    @staticmethod
    def _without_actions(actions: torch.Tensor, calibrated: torch.Tensor | None,
                         keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The action inputs of the samples where keep (B,) is False replaced by "no actions": zero normalised
        actions, action frames masked as uncalibrated (action_dropout's and action_guidance's null condition)."""
        actions = actions * keep[:, None, None].to(actions.dtype)
        if calibrated is not None:
            calibrated = calibrated * keep.to(calibrated.dtype)
        return actions, calibrated

    def guided_velocity(self, noisy_latents: torch.Tensor, t: torch.Tensor, conditions: _Conditions,
                        unconditioned: _Conditions | None, guidance: float) -> torch.Tensor:
        """v_none + guidance * (v_actions - v_none), both in one batched pass; the plain velocity without
        `unconditioned` or at guidance 1."""
        if unconditioned is None or guidance == 1.0:
            return self.velocity(noisy_latents, t, conditions)
        both = _Conditions(torch.cat([conditions.start_latent, unconditioned.start_latent]),
                           torch.cat([conditions.context, unconditioned.context]),
                           torch.cat([conditions.time_embedding, unconditioned.time_embedding]))
        v = self.velocity(torch.cat([noisy_latents, noisy_latents]), torch.cat([t, t]), both)
        v_actions, v_none = v.chunk(2)
        return v_none + guidance * (v_actions - v_none)

    # ----- training --------------------------------------------------------------------------------
    def training_loss(self, batch: ProphetBatch | Mapping, generator: torch.Generator | None = None,
                      motion_weighted: bool = True) -> torch.Tensor:
        """Rectified-flow loss on the future latents (or their change, predict_residual):
        ||v(x_t, t) - (source - x0)||^2 with x_t = t * source + (1 - t) * x0 and source the flow's start
        (noise, or the start frame plus a little noise: flow_source), averaged with motion_weights where
        motion_loss_weight > 0 and motion_weighted (False: the plain mean, which compares across weightings).
        The VAE is frozen."""
        batch = ProphetBatch.coerce(batch)
        current = self._pixels(batch.current_frame, "current_frame", 4)
        b = current.shape[0]
        history = self._pixels(batch.history_frames, "history_frames", 5)
        future = self._pixels(batch.future_frames, "future_frames", 5)
        if history.shape[0] != b or future.shape[:2] != (b, self.config.frames_per_clip):
            raise ValueError(f"history_frames must be ({b}, T, H, W, 3) and future_frames "
                             f"({b}, {self.config.frames_per_clip}, H, W, 3)")
        actions = self._actions(batch.actions, b)
        action_pixels, calibrated = self._action_frame_inputs(batch.action_frames, batch.calibrated, b)
        if self.training and self.config.action_dropout > 0:
            keep = torch.rand(b, generator=generator, device=self.device) >= self.config.action_dropout
            actions, calibrated = self._without_actions(actions, calibrated, keep)
        length = self.config.history_length
        with torch.no_grad():
            frames = [self._history_window(history, current), current[:, None], future]
            if action_pixels is not None:
                frames.append(action_pixels)
            latents = self._encode_pixels(torch.cat(frames, dim=1))
        history_latents = latents[:, :, :length]
        start_latent = latents[:, :, length:length + 1]
        future_latents = latents[:, :, length + 1:length + 1 + self.config.frames_per_clip]
        target = self._to_residual(future_latents, start_latent)
        action_frame_latents = latents[:, :, length + 1 + self.config.frames_per_clip:] if action_pixels is not None \
            else None

        conditions = self._conditions(start_latent, history_latents, actions, action_frame_latents, calibrated)
        noise = randn_tensor(target.shape, generator=generator, device=self.device, dtype=target.dtype)
        source = self._flow_source(noise, start_latent)
        t = flow_matching.sample_training_times(b, self.config.timestep_shift, generator, self.device)
        noisy = flow_matching.add_noise(target, source, t)
        error = (self.velocity(noisy, t, conditions) - flow_matching.velocity_target(target, source)).square()
        if self.config.motion_loss_weight == 0 or not motion_weighted:
            return error.mean()
        weights = self.motion_weights(future_latents, start_latent)
        return (error * weights).mean() / weights.mean()

    def motion_weights(self, future_latents: torch.Tensor, start_latent: torch.Tensor) -> torch.Tensor:
        """The motion-weighted loss's weights (B, 1, F, h, w): 1 + motion_loss_weight * m, m each latent position's
        mean absolute change from the start frame's latent over channels, divided by its clip's mean change."""
        change = (future_latents - start_latent).abs().mean(dim=1, keepdim=True)
        relative = change / change.mean(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
        return 1 + self.config.motion_loss_weight * relative

    # ----- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def initial_noise(self, batch: int, generator: torch.Generator | None = None,
                      shared_noise: bool = False) -> torch.Tensor:
        """The noise a clip's sampling starts from, (B, C, F, h, w): what `generate` draws from `generator`.
        shared_noise: one draw repeated over the batch (common random numbers)."""
        shape = (batch, self.latent_channels, self.config.frames_per_clip, self.latent_size, self.latent_size)
        if shared_noise:
            return randn_tensor((1, *shape[1:]), generator=generator, device=self.device,
                                dtype=torch.float32).expand(shape).contiguous()
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def sampling_steps(self, num_steps: int | None = None) -> int:
        """The Euler steps `generate` takes for `num_steps` (None: the config's num_inference_steps)."""
        return self.config.num_inference_steps if num_steps is None else num_steps

    @torch.no_grad()
    def generate(self, start_frame, history_frames, actions, num_steps: int | None = None,
                 generator: torch.Generator | None = None, *, action_frames=None, calibrated=None,
                 shared_noise: bool = False, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the next clip: (B, F, S, S, 3) float frames in [0, 255], without autograd (sampling is never
        trained through; a graph kept in a rollout's history buffer would chain every chunk's).

        start_frame (B, H, W, 3); history_frames (B, T, H, W, 3) oldest first, or None; actions
        (B, horizon, action_dim); num_steps Euler steps (default config.num_inference_steps; 0 decodes
        the flow's source: see flow_source). Seeded by generator. shared_noise: every batch element starts
        from the same initial noise (common random numbers: identical inputs give identical clips). noise:
        the initial noise itself (initial_noise's shape), which then replaces generator and shared_noise
        (several rollout groups sampled in one batch, each with its own generator's draw).
        """
        start = self._pixels(start_frame, "start_frame", 4)
        b = start.shape[0]
        history = self._pixels(history_frames, "history_frames", 5) if history_frames is not None \
            else start.new_zeros(b, 0, *start.shape[1:])
        if history.shape[0] != b:
            raise ValueError(f"history_frames has batch {history.shape[0]}, start_frame {b}")
        actions = self._actions(actions, b)
        action_pixels, calibrated = self._action_frame_inputs(action_frames, calibrated, b)
        length = self.config.history_length
        latents = self._encode_pixels(torch.cat([self._history_window(history, start), start[:, None]], dim=1))
        action_frame_latents = self._encode_pixels(action_pixels) if action_pixels is not None else None
        conditions = self._conditions(latents[:, :, length:], latents[:, :, :length], actions,
                                      action_frame_latents, calibrated)
        guidance = self.config.action_guidance
        unconditioned = None
        if guidance != 1.0:
            no_actions, no_calibration = self._without_actions(
                actions, calibrated, torch.zeros(b, dtype=torch.bool, device=self.device))
            unconditioned = self._conditions(latents[:, :, length:], latents[:, :, :length], no_actions,
                                             action_frame_latents, no_calibration)

        if noise is None:
            x = self.initial_noise(b, generator, shared_noise)
        else:
            shape = (b, self.latent_channels, self.config.frames_per_clip, self.latent_size, self.latent_size)
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}")
            x = noise.to(self.device, torch.float32)
        x = self._flow_source(x, conditions.start_latent)
        steps = self.sampling_steps(num_steps)
        sigmas = flow_matching.sigmas(steps, self.config.timestep_shift, dtype=torch.float64).tolist()
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            v = self.guided_velocity(x, torch.full((b,), sigma, device=self.device), conditions, unconditioned,
                                     guidance)
            x = flow_matching.euler_step(x, v, sigma, sigma_next)
        return self.decode_latents(self._from_residual(x, conditions.start_latent))

    @torch.no_grad()
    def rollout(self, start_frame, action_chunks, history_frames=None, num_steps: int | None = None,
                generator: torch.Generator | None = None, *, action_frames=None, calibrated=None) -> torch.Tensor:
        """Closed-loop imagination: (B, N * F, S, S, 3) float frames in [0, 255].

        action_chunks (B, N, horizon, action_dim): for each chunk, generate a clip; its last frame is the
        next start frame and the start frame plus the clip's other frames join the history buffer.
        start_frame (1 or B, H, W, 3) and history_frames (1 or B, T, H, W, 3) broadcast over a group of
        B rollouts from the same start. action_frames (B, N, F, H, W, 3), calibrated (B,), optional.
        """
        chunks = _as_tensor(action_chunks)
        if chunks.ndim != 4:
            raise ValueError(f"action_chunks must be (B, N, horizon, action_dim), got {tuple(chunks.shape)}")
        b, n = chunks.shape[:2]
        start = _broadcast(_as_tensor(start_frame), b, "start_frame").to(self.device, torch.float32)
        if history_frames is None:
            history = start.new_zeros(b, 0, *start.shape[1:])
        else:
            history = _broadcast(_as_tensor(history_frames), b, "history_frames").to(self.device, torch.float32)
        # Resized once to the model's size: the history buffer then holds given and generated frames alike.
        start = self._resized(start, "start_frame", 4)
        history = self._resized(history, "history_frames", 5)
        clips = []
        for i in range(n):
            clip = self.generate(start, history, chunks[:, i], num_steps, generator,
                                 action_frames=None if action_frames is None else action_frames[:, i],
                                 calibrated=calibrated)
            clips.append(clip)
            history = torch.cat([history, start[:, None], clip[:, :-1]], dim=1)[:, -self.config.history_length:]
            start = clip[:, -1]
        return torch.cat(clips, dim=1)

    # ----- persistence -----------------------------------------------------------------------------
    @property
    def saves_adapter_only(self) -> bool:
        """A LoRA model on a pretrained base saves only what it trained (+ buffers); the base stays in
        pretrained_path. Everything else saves every weight."""
        return bool(self.config.pretrained_path) and self.config.finetune != "full"

    def _adapter_keys(self) -> set[str]:
        """What an adapter checkpoint holds: the trained weights and Prophet's own normalisation buffers."""
        return {name for name, p in self.named_parameters() if p.requires_grad} | \
            {name for name, _ in self.named_buffers(recurse=False)}

    def save_pretrained(self, directory: str | Path) -> Path:
        """prophet_config.json + model.safetensors (or adapter.safetensors), written atomically; other entries
        of an existing `directory` stay. Non-finite weights raise NonFiniteError and write nothing."""
        directory = Path(directory)
        with atomic_directory(directory, drop=(WEIGHTS_NAME, ADAPTER_NAME)) as tmp:
            (tmp / CONFIG_NAME).write_text(self.config.to_json())
            state = self.state_dict()
            contents = "full"
            if self.saves_adapter_only:
                keys = self._adapter_keys()
                state = {k: v for k, v in state.items() if k in keys}
                contents = "adapter"
            state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
            save_finite_safetensors(state, tmp / (ADAPTER_NAME if contents == "adapter" else WEIGHTS_NAME),
                                    {"format": "pt", "model": "prophrl_prophet", "contents": contents},
                                    f"Prophet weights for {directory}")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "Prophet":
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise ConfigError(f"{directory}: not a Prophet checkpoint (missing {CONFIG_NAME})")
        config = ProphetConfig.from_json_file(directory / CONFIG_NAME)
        model = cls(config)
        weights = directory / (ADAPTER_NAME if model.saves_adapter_only else WEIGHTS_NAME)
        if not weights.is_file():
            raise ConfigError(f"{directory}: not a Prophet checkpoint (missing {weights.name})")
        state = load_safetensors(weights, str(map_location))
        for name, tensor in state.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ConfigError(f"{weights}: tensor {name} contains NaN/inf")
        expected = model._adapter_keys() if model.saves_adapter_only else set(model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ConfigError(f"{weights}: weights do not match the config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
        try:
            model.load_state_dict(state, strict=not model.saves_adapter_only)
        except RuntimeError as exc:  # shape mismatches
            raise ConfigError(f"{weights}: weights do not match the config: {exc}") from exc
        return model.to(map_location)


def colour_mask(pixels: torch.Tensor) -> torch.Tensor:
    """1 where a pixel of (N, 3, H, W) images in [-1, 1] is saturated and bright (HSV saturation >
    COLOUR_MIN_SATURATION, value > COLOUR_MIN_VALUE), else 0; shape (N, 1, H, W)."""
    rgb = (pixels + 1) / 2
    value = rgb.amax(dim=1, keepdim=True)
    saturation = (value - rgb.amin(dim=1, keepdim=True)) / value.clamp_min(1e-6)
    return ((saturation > COLOUR_MIN_SATURATION) & (value > COLOUR_MIN_VALUE)).to(pixels.dtype)


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _broadcast(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise ValueError(f"{name} has batch {x.shape[0]}; need 1 or {batch}")
