"""Prophet's network pieces and how they are built: the action-conditioned Wan transformer, the conditioning
module (history memory, action tokens, dual action conditioning), and the VAE + transformer built from a config
or loaded from a local diffusers model (see modeling_prophet for how they fit together)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderKLWan, WanTransformer3DModel
from torch import nn

from prophrl_common.config_io import ConfigError
from prophrl_worldmodel.configuration_prophet import ProphetConfig

VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "AutoencoderKLWan": AutoencoderKLWan}


class ActionConditionedWanTransformer(WanTransformer3DModel):
    """WanTransformer3DModel whose forward adds ``added_time_embedding`` (B, inner_dim) to the timestep
    embedding before it is projected into the blocks' scale/shift/gate modulation and the output norm.

    Same weights and config as the parent, so a stock Wan checkpoint loads into it unchanged. The forward
    is the parent's text-to-video path (one timestep per sample, no image-embedding branch) written out.
    """

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_time_embedding: torch.Tensor | None = None) -> torch.Tensor:
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        rotary_emb = self.rope(hidden_states)
        tokens = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        embedder = self.condition_embedder
        time_embedder_dtype = next(embedder.time_embedder.parameters()).dtype
        temb = embedder.time_embedder(embedder.timesteps_proj(timestep).to(time_embedder_dtype))
        if added_time_embedding is not None:
            temb = temb + added_time_embedding.to(temb.dtype)
        temb = temb.type_as(tokens)
        modulation = embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1))
        context = embedder.text_embedder(encoder_hidden_states)

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens, context, modulation, rotary_emb)
            else:
                tokens = block(tokens, context, modulation, rotary_emb)

        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        tokens = (self.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        out = self.proj_out(tokens)
        out = out.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _mlp(in_features: int, out_features: int) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(in_features, out_features), nn.SiLU(), nn.Linear(out_features, out_features))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


class ProphetConditioning(nn.Module):
    """Prophet's own layers: history-memory and action tokens (cross-attention context) and the action
    embeddings added to the timestep embedding."""

    def __init__(self, config: ProphetConfig, latent_channels: int, latent_size: int, inner_dim: int,
                 context_dim: int):
        super().__init__()
        self.config = config
        self.history_proj = nn.ModuleList()
        self.history_pos = nn.ParameterList()
        for frames, pool_t, pool_h, pool_w in config.history_scales:
            tokens = (frames // pool_t) * (latent_size // pool_h) * (latent_size // pool_w)
            self.history_proj.append(nn.Linear(latent_channels, context_dim))
            self.history_pos.append(nn.Parameter(torch.randn(tokens, context_dim) * 0.02))
        self.action_tokens = nn.Linear(config.actions_per_frame * config.action_dim, context_dim)
        self.action_token_pos = nn.Parameter(torch.randn(config.frames_per_clip, context_dim) * 0.02)
        self.action_embedding = _mlp(config.action_horizon * config.action_dim, inner_dim)
        self.action_frame_embedding = None
        if config.use_action_frames:
            grid = config.action_frame_grid
            self.action_frame_embedding = _mlp(config.frames_per_clip * latent_channels * grid * grid, inner_dim)

    def context(self, history_latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """history_latents (B, C, history_length, h, w), oldest first; actions (B, horizon, action_dim)
        -> (B, N, context_dim) tokens."""
        tokens = []
        end = history_latents.shape[2]
        for (frames, *window), proj, pos in zip(self.config.history_scales, self.history_proj, self.history_pos):
            pooled = F.avg_pool3d(history_latents[:, :, end - frames:end], kernel_size=window, stride=window)
            tokens.append(proj(pooled.flatten(2).transpose(1, 2)) + pos)
            end -= frames
        per_frame = actions.reshape(actions.shape[0], self.config.frames_per_clip, -1)
        tokens.append(self.action_tokens(per_frame) + self.action_token_pos)
        return torch.cat(tokens, dim=1)

    def time_embedding(self, actions: torch.Tensor, action_frame_latents: torch.Tensor | None,
                       calibrated: torch.Tensor | None) -> torch.Tensor:
        """(B, inner_dim): scalar action stream + (calibrated samples only) action-frame stream."""
        embedding = self.action_embedding(actions.flatten(1))
        if self.action_frame_embedding is not None and action_frame_latents is not None:
            grid = self.config.action_frame_grid
            pooled = F.adaptive_avg_pool3d(action_frame_latents, (action_frame_latents.shape[2], grid, grid))
            frames_term = self.action_frame_embedding(pooled.flatten(1))
            embedding = embedding + frames_term * calibrated.to(frames_term.dtype)[:, None]
        return embedding


def build_from_scratch(config: ProphetConfig) -> tuple[AutoencoderKL, ActionConditionedWanTransformer]:
    blocks = len(config.vae_channels)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * blocks,
                        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=tuple(config.vae_channels), layers_per_block=config.vae_layers_per_block,
                        latent_channels=config.vae_latent_channels, norm_num_groups=config.vae_norm_groups,
                        sample_size=config.image_size, scaling_factor=1.0, mid_block_add_attention=False)
    transformer = ActionConditionedWanTransformer(
        patch_size=tuple(config.patch_size), num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
        in_channels=config.vae_latent_channels, out_channels=config.vae_latent_channels, text_dim=config.context_dim,
        freq_dim=config.freq_dim, ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
        rope_max_seq_len=max(1 + config.frames_per_clip, config.image_size // config.vae_compression))
    if config.flow_source == "start_frame":
        # A zero velocity samples the flow's source: the untrained model copies the start frame.
        nn.init.zeros_(transformer.proj_out.weight)
        nn.init.zeros_(transformer.proj_out.bias)
    return vae, transformer


def load_pretrained_base(root: Path) -> tuple[AutoencoderKL | AutoencoderKLWan, ActionConditionedWanTransformer]:
    """vae/ and transformer/ subfolders of a local diffusers model (no hub)."""
    class_names = {}
    for sub in ("vae", "transformer"):
        try:
            class_names[sub] = json.loads((root / sub / "config.json").read_text()).get("_class_name")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise ConfigError(f"pretrained_path {root}: cannot read {sub}/config.json (expected a local diffusers "
                              f"layout with vae/ and transformer/): {exc}") from exc
    vae_class = VAE_CLASSES.get(class_names["vae"])
    if vae_class is None:
        raise ConfigError(f"{root / 'vae'}: unsupported VAE class {class_names['vae']!r}; "
                          f"supported: {sorted(VAE_CLASSES)}")
    if class_names["transformer"] != WanTransformer3DModel.__name__:
        raise ConfigError(f"{root / 'transformer'}: expected a WanTransformer3DModel, "
                          f"got {class_names['transformer']!r}")
    try:
        vae = vae_class.from_pretrained(root / "vae", local_files_only=True)
        transformer = ActionConditionedWanTransformer.from_pretrained(root / "transformer", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"pretrained_path {root}: cannot load the base model: {exc}") from exc
    return vae, transformer


def vae_compression(vae) -> int:
    if isinstance(vae, AutoencoderKLWan):
        return vae.spatial_compression_ratio
    return 2 ** (len(vae.config.block_out_channels) - 1)


def initial_latent_statistics(vae, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel latent (mean, std): a pretrained VAE's published values, else (0, 1/scaling_factor)."""
    config = vae.config
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        return (torch.tensor(config.latents_mean, dtype=torch.float32),
                torch.tensor(config.latents_std, dtype=torch.float32))
    shift = getattr(config, "shift_factor", None) or 0.0
    scale = getattr(config, "scaling_factor", None) or 1.0
    return torch.full((channels,), float(shift)), torch.full((channels,), 1.0 / float(scale))
