"""Reward judge: a whole rollout clip + instruction -> P(task success). Pure torch, no ROS.

Two backends with one interface, ``score(clips, instructions) -> (B,) success probabilities``:

- :class:`RewardJudge` (``backend: classifier``): a small video classifier trained from scratch
  (``judge_training.train_judge``). Each clip is resampled to ``num_frames`` frames spread uniformly
  over it (first and last always included, so the final state is always seen), resized to
  ``image_size``; a per-frame CNN (optionally fed the frame's difference to the first frame) gives
  one token per frame, an instruction token is added, a small temporal transformer mixes them and a
  linear head reads the instruction token and the last frame's token -> success logit.
  ``save_pretrained`` / ``from_pretrained``: config.json + model.safetensors, atomic.
- :class:`VLMJudge` (``backend: vlm``): a transformers image-text-to-text model loaded from a local
  directory only (``local_files_only``); it is shown the clip's last ``num_frames`` frames and the
  per-task success prompt (``JudgeConfig.prompt_for``), and the probability is
  P(yes) / (P(yes) + P(no)) from the logits of the first answer token.

Clips are uint8 (or float in [0, 255]) RGB: a (B, T, H, W, 3) array / tensor, or a list of
(T_i, H, W, 3) arrays of any lengths and sizes. Malformed input raises ValueError naming the clip.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from prophrl_common.atomic_io import atomic_directory, write_text_atomic
from prophrl_common.weights import load_safetensors, save_finite_safetensors
from prophrl_common.config_io import ConfigError
from prophrl_common.frames import resize_images
from prophrl_nn.text_encoder import HashedBagOfWords
from prophrl_worldmodel.configuration_judge import JudgeConfig, get_judge_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FEATURE_GRID = 4  # the CNN's feature map is pooled to FEATURE_GRID x FEATURE_GRID and flattened (keeps the layout)


# ----------------------------------------------------------------------------- clip input
def uniform_indices(length: int, num_frames: int) -> np.ndarray:
    """num_frames indices spread evenly over [0, length - 1], first and last included (repeats when short)."""
    if length <= 0:
        raise ValueError("a clip needs at least one frame")
    return np.rint(np.linspace(0, length - 1, num_frames)).astype(np.int64)


def check_clips(clips) -> list:
    """Validate clips and return them as a list of (T, H, W, 3) numpy arrays / tensors (no copies)."""
    if isinstance(clips, (np.ndarray, torch.Tensor)):
        if clips.ndim != 5:
            raise ValueError(f"clips must be (B, T, H, W, 3) or a list of (T, H, W, 3) arrays, got shape "
                             f"{tuple(clips.shape)}")
        items = list(clips)
    elif isinstance(clips, (list, tuple)):
        items = list(clips)
    else:
        raise ValueError(f"clips must be an array, a tensor or a list of arrays, got {type(clips).__name__}")
    if not items:
        raise ValueError("no clips to score")
    out = []
    for i, clip in enumerate(items):
        if not isinstance(clip, torch.Tensor):
            clip = np.asarray(clip)
        if clip.ndim != 4 or clip.shape[-1] != 3:
            raise ValueError(f"clip {i}: expected (T, H, W, 3) RGB frames, got shape {tuple(clip.shape)}")
        if clip.shape[0] == 0:
            raise ValueError(f"clip {i}: has no frames")
        if clip.shape[1] == 0 or clip.shape[2] == 0:
            raise ValueError(f"clip {i}: frames are empty ({clip.shape[1]}x{clip.shape[2]})")
        is_float = clip.dtype.is_floating_point if isinstance(clip, torch.Tensor) else clip.dtype.kind == "f"
        is_uint8 = clip.dtype == (torch.uint8 if isinstance(clip, torch.Tensor) else np.uint8)
        if not (is_float or is_uint8):
            raise ValueError(f"clip {i}: frames must be uint8 (or float in [0, 255]), got {clip.dtype}")
        out.append(clip)
    return out


def check_instructions(instructions, batch: int) -> list[str]:
    if isinstance(instructions, str):
        instructions = [instructions] * batch
    instructions = list(instructions)
    if len(instructions) != batch:
        raise ValueError(f"got {batch} clips but {len(instructions)} instructions")
    if not all(isinstance(t, str) for t in instructions):
        raise ValueError("instructions must be strings")
    return instructions


def frames_at(clip, indices: np.ndarray, image_size: int) -> torch.Tensor:
    """clip[indices] as a float (T, 3, S, S) tensor in [0, 1] at image_size (prophrl_common.frames: reduced as
    Prophet's training frames are, so real and imagined clips are alike)."""
    x = clip[torch.as_tensor(indices)] if isinstance(clip, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(clip[indices]))
    x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("clip frames contain NaN/inf")
    x = x.permute(0, 3, 1, 2).clamp(0, 255).div(255.0)
    return resize_images(x, image_size)


# ----------------------------------------------------------------------------- classifier
class FrameEncoder(nn.Module):
    """Stride-2 conv blocks -> pooled FEATURE_GRID x FEATURE_GRID feature map -> one token per frame."""

    def __init__(self, in_channels: int, channels: Sequence[int], out_dim: int, dropout: float):
        super().__init__()
        layers = []
        for c_in, c_out in zip((in_channels, *channels[:-1]), channels):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(FEATURE_GRID)
        self.proj = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels[-1] * FEATURE_GRID ** 2, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, S, S) -> (N, D)
        return self.proj(self.pool(self.body(x)))


class RewardJudge(nn.Module):
    """Video success classifier (backend classifier). See the module docstring."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        config = config.validate()
        if config.backend != "classifier":
            raise ConfigError(f"RewardJudge is the classifier backend; config {config.name!r} has backend "
                              f"{config.backend!r} (use VLMJudge / load_judge)")
        self.config = config
        d = config.hidden_dim
        self.frame_encoder = FrameEncoder(6 if config.frame_difference else 3, config.cnn_channels, d, config.dropout)
        self.text = HashedBagOfWords(d, config.text_buckets)
        self.position = nn.Parameter(torch.randn(config.num_frames + 1, d) * 0.02)  # instruction, frames
        layer = nn.TransformerEncoderLayer(d, config.num_heads, 2 * d, config.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.temporal = nn.TransformerEncoder(layer, config.temporal_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, 1))

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def device(self) -> torch.device:
        return self.position.device

    def prepare(self, clips) -> torch.Tensor:
        """Validated clips -> (B, num_frames, 3, S, S) float in [0, 1] (uniformly resampled)."""
        items = check_clips(clips)
        n, size = self.config.num_frames, self.config.image_size
        return torch.stack([frames_at(c, uniform_indices(c.shape[0], n), size) for c in items])

    def forward(self, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """frames (B, num_frames, 3, S, S) in [0, 1] -> success logits (B,)."""
        b, t = frames.shape[:2]
        if t != self.config.num_frames or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, {self.config.num_frames}, 3, S, S), got {tuple(frames.shape)}")
        x = frames.to(self.device, torch.float32) * 2 - 1
        if self.config.frame_difference:
            x = torch.cat([x, x - x[:, :1]], dim=2)
        tokens = self.frame_encoder(x.flatten(0, 1)).view(b, t, -1)
        sequence = torch.cat([self.text(instructions), tokens], dim=1) + self.position
        hidden = self.temporal(sequence)
        return self.head(torch.cat([hidden[:, 0], hidden[:, -1]], dim=-1)).squeeze(-1)

    @torch.inference_mode()
    def score(self, clips, instructions, batch_size: int = 64) -> torch.Tensor:
        """Success probabilities (B,) on the CPU for clips (see the module docstring) and instructions
        (one per clip, or one string for all)."""
        items = check_clips(clips)
        instructions = check_instructions(instructions, len(items))
        was_training = self.training
        self.eval()
        try:
            out = [torch.sigmoid(self(self.prepare(items[i:i + batch_size]).to(self.device),
                                      instructions[i:i + batch_size])).float().cpu()
                   for i in range(0, len(items), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)

    def with_threshold(self, threshold: float) -> "RewardJudge":
        """Set the success threshold (saved with the weights); returns self."""
        self.config = dataclasses.replace(self.config, threshold=float(threshold)).validate()
        return self

    # ----- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """config.json + model.safetensors (+ judge_training.json when `extra` is given), atomically; other
        entries of an existing `directory` stay. Non-finite weights raise NonFiniteError and write nothing."""
        directory = Path(directory)
        with atomic_directory(directory, drop=("judge_training.json",)) as tmp:
            (tmp / CONFIG_NAME).write_text(self.config.to_json())
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_finite_safetensors(state, tmp / WEIGHTS_NAME, {"format": "pt", "model": "prophrl_reward_judge"},
                                    f"reward-judge weights for {directory}")
            if extra is not None:
                (tmp / "judge_training.json").write_text(json.dumps(extra, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "RewardJudge":
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise ConfigError(f"{directory}: not a reward-judge checkpoint (missing {name})")
        config = JudgeConfig.from_json_file(directory / CONFIG_NAME)
        model = cls(config)
        state = load_safetensors(directory / WEIGHTS_NAME, str(map_location))
        for name, tensor in state.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ConfigError(f"{directory / WEIGHTS_NAME}: tensor {name} contains NaN/inf")
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ConfigError(f"{directory / WEIGHTS_NAME}: weights do not match the config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # shape mismatches
            raise ConfigError(f"{directory / WEIGHTS_NAME}: weights do not match the config: {exc}") from exc
        return model.to(map_location).eval()


# ----------------------------------------------------------------------------- VLM
class VLMJudge:
    """A local transformers VLM asked a yes/no success question (backend vlm). Same score() as RewardJudge."""

    def __init__(self, config: JudgeConfig, device: str | torch.device = "cpu"):
        config = config.validate()
        if config.backend != "vlm":
            raise ConfigError(f"VLMJudge needs backend vlm, config {config.name!r} has {config.backend!r}")
        self.config = config
        self.device = torch.device(device)
        path = Path(config.model_path)
        if not path.is_dir():
            raise ConfigError(f"VLM judge: model_path {path} is not a directory (models load from local paths only)")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"VLM judge: cannot load a processor + image-text-to-text model from {path}: {exc}") \
                from exc
        self.model.to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ConfigError(f"VLM judge: the processor in {path} has no tokenizer")
        self.yes_ids = self._answer_ids(config.yes_word)
        self.no_ids = self._answer_ids(config.no_word)
        if set(self.yes_ids) & set(self.no_ids):
            raise ConfigError(f"VLM judge: {config.yes_word!r} and {config.no_word!r} share a first token")

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def save_pretrained(self, directory: str | Path) -> Path:
        """A judge directory holding only config.json (backend vlm, the model's absolute path): the model
        itself stays where it is. load_judge(directory) restores this judge."""
        directory = Path(directory)
        if directory.resolve() == Path(self.config.model_path).resolve():
            raise ConfigError(f"{directory}: is the VLM's own directory; save the judge config elsewhere")
        directory.mkdir(parents=True, exist_ok=True)
        config = dataclasses.replace(self.config, model_path=str(Path(self.config.model_path).resolve()))
        write_text_atomic(directory / CONFIG_NAME, config.to_json())
        return directory

    def _answer_ids(self, word: str) -> list[int]:
        """First token ids of the answer word as the model may start its reply (yes / Yes / ' yes' / ' Yes')."""
        unk = self.tokenizer.unk_token_id
        ids = set()
        for variant in {word, word.capitalize(), " " + word, " " + word.capitalize()}:
            tokens = self.tokenizer(variant, add_special_tokens=False)["input_ids"]
            if tokens and tokens[0] != unk:
                ids.add(int(tokens[0]))
        if not ids:
            raise ConfigError(f"VLM judge: the tokenizer in {self.config.model_path} cannot encode {word!r}")
        return sorted(ids)

    def prompt(self, instruction: str, num_images: int) -> str:
        """The chat-formatted question (images first, then the per-task success prompt)."""
        question = self.config.prompt_for(instruction)
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        image_token = getattr(self.processor, "image_token", "<image>")
        return image_token * num_images + question + "\nAnswer:"

    def last_frames(self, clip) -> list:
        from PIL import Image

        frames = clip[-self.config.num_frames:]
        frames = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if frames.dtype != np.uint8:
            if not np.isfinite(frames).all():
                raise ValueError("clip frames contain NaN/inf")
            frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
        return [Image.fromarray(f) for f in frames]

    @torch.inference_mode()
    def score(self, clips, instructions, batch_size: int = 4) -> torch.Tensor:
        items = check_clips(clips)
        instructions = check_instructions(instructions, len(items))
        out = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            images = [self.last_frames(c) for c in chunk]
            texts = [self.prompt(t, len(imgs)) for t, imgs in zip(instructions[start:start + batch_size], images)]
            batch = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            logits = self.model(**batch).logits.float()
            mask = batch["attention_mask"]
            last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # last real token (left or right padding)
            probs = logits[torch.arange(logits.shape[0]), last].softmax(-1)
            p_yes = probs[:, self.yes_ids].sum(-1)
            p_no = probs[:, self.no_ids].sum(-1)
            out.append((p_yes / (p_yes + p_no).clamp_min(1e-12)).cpu())
        return torch.cat(out)


def load_judge(path: str | Path, backend: str = "auto", device: str | torch.device = "cpu"):
    """A judge from `path`: a classifier checkpoint, a judge config.json with backend vlm, or (backend vlm)
    a transformers model directory. backend: auto | classifier | vlm."""
    path = Path(path)
    if backend not in ("auto", "classifier", "vlm"):
        raise ConfigError(f"backend must be auto, classifier or vlm, got {backend!r}")
    if not path.exists():
        raise ConfigError(f"{path}: judge path does not exist")
    config_file = path / CONFIG_NAME
    judge_config = None
    if config_file.is_file():
        try:
            raw = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{config_file}: cannot read: {exc}") from exc
        if isinstance(raw, dict) and raw.get("backend") in ("classifier", "vlm"):
            judge_config = JudgeConfig.from_json_file(config_file)
    if judge_config is not None and judge_config.backend == "classifier":
        if backend == "vlm":
            raise ConfigError(f"{path}: is a classifier judge checkpoint, not a VLM")
        return RewardJudge.from_pretrained(path, map_location=device)
    if judge_config is not None:  # a saved VLM judge config
        if backend == "classifier":
            raise ConfigError(f"{path}: holds a VLM judge config, not a classifier checkpoint")
        return VLMJudge(judge_config, device)
    if backend == "vlm":  # a bare transformers model directory
        return VLMJudge(get_judge_config("vlm", model_path=str(path)), device)
    raise ConfigError(f"{path}: not a reward-judge checkpoint (no judge config.json); "
                      "for a transformers VLM directory pass backend vlm")
