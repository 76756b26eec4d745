"""Reward-judge configuration: named configs in a registry, saved as JSON beside the weights.

Two backends behind one ``score(clips, instructions)`` interface (``modeling_judge``):

- ``classifier``: a small video success classifier trained from scratch on sim-labelled clips (and on
  Prophet-imagined clips labelled by the sim's ground truth). A per-frame CNN over ``num_frames``
  frames sampled uniformly over the clip (always the first and the last), temporal self-attention
  with an instruction token (hashed bag of words), and a linear head -> success logit.
- ``vlm``: a transformers image-text-to-text model from a local directory (no hub access), asked a
  per-task yes/no success prompt with the clip's last ``num_frames`` frames; the success
  probability is P("yes") / (P("yes") + P("no")) from the next-token logits.

``threshold`` turns a probability into a success decision. ``train_judge`` picks it on the
validation split for high recall (what RL needs, see PAPER.md) and stores it here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prophrl_common.config_io import (ConfigError, dataclass_from_json_file, dataclass_to_json,
                                      require_finite_numbers)

BACKENDS = ("classifier", "vlm")
# The validation clips a trained judge's threshold may be picked on (judge_training.JudgeTrainConfig.threshold_on):
# all of them, or those of one source of judge_clips.ClipSet ("real" recorded, "imagined" by Prophet, "rl" RL's
# rollouts in the sim, judge_mined_clips).
THRESHOLD_SOURCES = ("all", "real", "imagined", "rl")

# (keyword, template): the first keyword found as a word of the instruction picks the template;
# `{instruction}` is replaced by the instruction. Prompts ask about the final state only: the judge
# scores whether the task is achieved at the end of the clip.
DEFAULT_PROMPTS: tuple[tuple[str, str], ...] = (
    ("lift", "These are the last frames of a robot video. The robot was told: \"{instruction}\". "
             "In the final frame, is that cube held in the gripper clearly above the table? Answer yes or no."),
    ("stack", "These are the last frames of a robot video. The robot was told: \"{instruction}\". "
              "In the final frame, is the first cube resting on top of the other cube? Answer yes or no."),
    ("door", "These are the last frames of a robot video. The robot was told: \"{instruction}\". "
             "In the final frame, is the door open? Answer yes or no."),
)
DEFAULT_PROMPT = ("These are the last frames of a robot video. The robot was told: \"{instruction}\". "
                  "Did the robot complete the task by the final frame? Answer yes or no.")


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    name: str = "tiny"
    backend: str = "classifier"           # classifier | vlm
    # Frames the judge looks at: classifier, sampled uniformly over the clip (first and last always
    # included); vlm, the clip's last num_frames frames.
    num_frames: int = 8
    image_size: int = 64                  # frames are resized to image_size x image_size
    # P(success) >= threshold counts as success (set from the validation split by train_judge).
    threshold: float = 0.5
    # ---- classifier backend
    cnn_channels: tuple[int, ...] = (16, 32, 64, 64)   # one stride-2 conv block each
    hidden_dim: int = 64
    num_heads: int = 4
    temporal_layers: int = 1
    text_buckets: int = 1024              # hashed bag-of-words instruction embedding
    # Feed each frame together with its difference to the clip's first frame (what changed).
    frame_difference: bool = True
    dropout: float = 0.1
    # ---- vlm backend
    model_path: str = ""                  # local transformers model directory (processor + weights)
    prompts: tuple[tuple[str, ...], ...] = DEFAULT_PROMPTS
    default_prompt: str = DEFAULT_PROMPT
    yes_word: str = "yes"
    no_word: str = "no"

    def validate(self, source: str = "JudgeConfig") -> "JudgeConfig":
        require_finite_numbers(self, source)
        if self.backend not in BACKENDS:
            raise ConfigError(f"{source}: backend must be one of {BACKENDS}, got {self.backend!r}")
        for key in ("num_frames", "image_size", "hidden_dim", "num_heads", "temporal_layers", "text_buckets"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: {key} must be positive")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"{source}: threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{source}: dropout must be in [0, 1)")
        if self.backend == "classifier":
            if not self.cnn_channels or min(self.cnn_channels) <= 0:
                raise ConfigError(f"{source}: cnn_channels must be positive integers")
            if any(c % 8 for c in self.cnn_channels):
                raise ConfigError(f"{source}: cnn_channels must be multiples of 8 (GroupNorm groups)")
            if self.image_size < 2 ** len(self.cnn_channels):
                raise ConfigError(f"{source}: image_size {self.image_size} is too small for "
                                  f"{len(self.cnn_channels)} stride-2 conv blocks")
            if self.hidden_dim % self.num_heads:
                raise ConfigError(f"{source}: hidden_dim must be divisible by num_heads")
        else:
            if not self.model_path:
                raise ConfigError(f"{source}: backend vlm needs model_path (a local transformers model directory)")
            if not self.yes_word or not self.no_word or self.yes_word == self.no_word:
                raise ConfigError(f"{source}: yes_word and no_word must be two different non-empty words")
        for i, entry in enumerate(self.prompts):
            if len(entry) != 2 or not entry[0] or "{instruction}" not in entry[1]:
                raise ConfigError(f"{source}: prompts[{i}] must be [keyword, template with {{instruction}}]")
        if "{instruction}" not in self.default_prompt:
            raise ConfigError(f"{source}: default_prompt must contain {{instruction}}")
        return self

    def prompt_for(self, instruction: str) -> str:
        """The success question for this instruction (the first prompt whose keyword is a word of it)."""
        words = instruction.lower().replace(",", " ").replace(".", " ").split()
        for keyword, template in self.prompts:
            if keyword.lower() in words:
                return template.replace("{instruction}", instruction)
        return self.default_prompt.replace("{instruction}", instruction)

    def to_json(self) -> str:
        return dataclass_to_json(self)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "JudgeConfig":
        return dataclass_from_json_file(cls, path, "judge config")


JUDGE_CONFIGS: dict[str, JudgeConfig] = {
    # Trains on one CPU core in about a minute: 8 frames at 48 px (64 px sim frames are resized).
    "tiny": JudgeConfig(image_size=48),
    # A local VLM (e.g. SmolVLM / Qwen2.5-VL class) asked a per-task yes/no question; model_path required.
    "vlm": JudgeConfig(name="vlm", backend="vlm", num_frames=4, image_size=224),
}


def get_judge_config(name: str, **overrides) -> JudgeConfig:
    if name not in JUDGE_CONFIGS:
        raise ConfigError(f"unknown judge config '{name}'; available: {sorted(JUDGE_CONFIGS)}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(JudgeConfig)})
    if unknown:
        raise ConfigError(f"judge config '{name}': unknown key(s) {unknown}")
    return dataclasses.replace(JUDGE_CONFIGS[name], **overrides).validate(name)
