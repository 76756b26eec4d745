"""A tiny world model, policy and dataset built in seconds, for tests and benches of RL in imagination.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from prophrl_common.chunks import ARM_ACTION_DIM, POLICY_STATE_DIM
from prophrl_policy.modeling_vla import VLAPolicy
from prophrl_data.shards import SHARD_FORMAT



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


def smoke_norm_stats():
    """SFT-like normalisation for an untrained policy: centimetre-scale position deltas per step."""
    from prophrl_policy.transforms import NormStats

    return NormStats((0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0, 0.5), (0.1,) * POLICY_STATE_DIM, (0.0,) * ARM_ACTION_DIM,
                     (0.01, 0.01, 0.01, 0.05, 0.05, 0.05, 0.5))


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
                                                 "action_dim": ARM_ACTION_DIM,
                                                 "episodes": index}, indent=1))
    return root


def make_smoke_setup(root: str | Path, *, image_size: int = 32, frames_per_clip: int = 2, actions_per_frame: int = 2,
                     prophet_layers: int = 1, policy_hidden: int = 32, policy_layers: int = 1,
                     denoising_steps: int = 3, seed: int = 0) -> SmokeSetup:
    from prophrl_policy.configuration_vla import get_vla_config
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
    VLAPolicy(config, smoke_norm_stats()).save_pretrained(root / "policy")
    write_smoke_dataset(root / "data", size=image_size + 8, seed=seed)
    return SmokeSetup(root, root / "prophet", root / "policy", root / "data")
