"""VLA policy configuration: named configs in a registry (openpi-style), saved as JSON beside weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prophrl_common.config_io import (ConfigError, dataclass_from_json_file, dataclass_to_json,
                                      require_finite_numbers)
from prophrl_nn.flow_matching import SamplerConfig

VISION_BACKBONES = ("small_cnn", "mobilenet_v2", "hf_vision")
TEXT_ENCODERS = ("minilm", "hashed_bow", "hf_text")


@dataclasses.dataclass(frozen=True)
class VLAConfig:
    name: str = "tiny"
    # Observation encoders
    vision_backbone: str = "small_cnn"        # small_cnn | mobilenet_v2 (ImageNet weights, frozen) | hf_vision
    freeze_vision: bool = False
    image_size: int = 96                      # square input after resize
    # The camera resolution the policy sees (0: camera frames are resized straight to image_size). With
    # camera_size > 0 every camera frame is first reduced to camera_size x camera_size the way Prophet's training
    # frames are (prophrl_common.frames) and then resized to image_size: set it to the world model's image_size
    # and the robot's camera and Prophet's imagined frames reach the policy through the same pipeline.
    camera_size: int = 0
    text_encoder: str = "hashed_bow"          # minilm (frozen MiniLM-L6) | hashed_bow (trainable) | hf_text
    backbone_path: str = ""                   # local path for hf_* backbones (no hub at run time)
    state_dim: int = 8                        # proprio: ee position (3) + ee rotation (4, quat) + gripper (1)
    # Action chunk
    action_dim: int = 14                      # model space: 2 end effectors x 7 (single arm zero-pads)
    robot_action_dim: int = 7                 # what the robot executes (ee_delta_7d)
    horizon: int = 10
    # Flow-matching head (pi0-style action expert: action tokens attend to observation tokens)
    hidden_dim: int = 128
    num_layers: int = 3
    num_heads: int = 4
    dropout: float = 0.0
    # Sampling (SamplerConfig): Euler steps per chunk, and the SDE noise level of mode sde (RL exploration)
    num_inference_steps: int = SamplerConfig.num_steps
    noise_level: float = SamplerConfig.noise_level
    time_beta_alpha: float = 1.5              # t ~ Beta(1.5, 1) scaled into (0.001, 1]
    time_beta_beta: float = 1.0

    def validate(self, source: str = "VLAConfig") -> "VLAConfig":
        require_finite_numbers(self, source)
        for key in ("image_size", "state_dim", "action_dim", "horizon", "hidden_dim", "num_layers", "num_heads",
                    "num_inference_steps"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: {key} must be positive, got {getattr(self, key)}")
        if self.camera_size < 0:
            raise ConfigError(f"{source}: camera_size must be >= 0 (0: no reduction), got {self.camera_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{source}: dropout must be in [0, 1), got {self.dropout}")
        if not (self.time_beta_alpha > 0 and self.time_beta_beta > 0):
            raise ConfigError(f"{source}: time_beta_alpha and time_beta_beta must be positive")
        if self.vision_backbone not in VISION_BACKBONES:
            raise ConfigError(f"{source}: vision_backbone must be one of {VISION_BACKBONES}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ConfigError(f"{source}: text_encoder must be one of {TEXT_ENCODERS}")
        if self.vision_backbone.startswith("hf_") or self.text_encoder.startswith("hf_"):
            if not self.backbone_path:
                raise ConfigError(f"{source}: hf_* encoders need backbone_path (a local directory)")
        if not 0 < self.robot_action_dim <= self.action_dim:
            raise ConfigError(f"{source}: need 0 < robot_action_dim <= action_dim")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"{source}: hidden_dim must be divisible by num_heads")
        try:
            self.sampler
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return self

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(self.num_inference_steps, self.noise_level)

    def to_json(self) -> str:
        return dataclass_to_json(self)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "VLAConfig":
        return dataclass_from_json_file(cls, path, "policy config", added_later=("noise_level", "camera_size"))


VLA_CONFIGS: dict[str, VLAConfig] = {
    # Trains on a 2-core CPU in minutes.
    "tiny": VLAConfig(),
    # Pretrained frozen encoders shipped in PyPI packages (MobileNetV2 ImageNet, MiniLM-L6).
    "tiny_pretrained": VLAConfig(name="tiny_pretrained", vision_backbone="mobilenet_v2", freeze_vision=True,
                                 image_size=128, text_encoder="minilm"),
    # A transformers vision-language backbone from a local path (SigLIP / SmolVLM class).
    "base": VLAConfig(name="base", vision_backbone="hf_vision", freeze_vision=True, image_size=224,
                      text_encoder="hf_text", hidden_dim=512, num_layers=6, num_heads=8, horizon=20),
}


def get_vla_config(name: str, **overrides) -> VLAConfig:
    if name not in VLA_CONFIGS:
        raise ConfigError(f"unknown policy config '{name}'; available: {sorted(VLA_CONFIGS)}")
    return dataclasses.replace(VLA_CONFIGS[name], **overrides).validate(name)
