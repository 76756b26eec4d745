"""Demonstrations as Prophet sees them: each recorded frame imagined one action chunk ahead of the recording.

RL in imagination changes what a policy does on the world model's frames, and those are not the camera's: a
policy cloned on camera frames alone acts differently on Prophet's (bench/imagined_actions_in_sim.py). With
``SFTConfig.imagined_view_share`` > 0 (``prophrl policy sft --imagined-views PROPHET``) the policy also learns the
demonstrated chunk at step i from what Prophet imagines at step i: the clip it predicts from the recorded frames
and pose at step i - span with the recorded actions in between (span = frames_per_clip x actions_per_frame, one
Prophet call), sampled with the Euler steps that imagination uses. The first span steps of an episode have no
imagined view and always read the camera.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from prophrl_data.shards import ShardEpisode


@dataclasses.dataclass(frozen=True)
class ImaginedViews:
    """One episode's imagined frames: frames (T, S, S, 3) uint8, valid (T,) bool (False: no imagined view)."""

    frames: np.ndarray
    valid: np.ndarray


@torch.no_grad()
def imagine_views(prophet, episodes: Sequence[ShardEpisode], num_steps: int | None = None, batch_size: int = 32,
                  seed: int = 0, show_progress: bool = True) -> list[ImaginedViews]:
    """Per episode (frames at `prophet`'s image size: clips.load_episodes), frame i as `prophet` imagines it from
    step i - span; seeded, so the same call gives the same views."""
    from tqdm import tqdm

    from prophrl_worldmodel.clips import ClipSampler

    config = prophet.config
    sampler = ClipSampler(episodes, config)
    span = config.frames_per_clip * config.actions_per_frame
    size = config.image_size
    views = [ImaginedViews(np.zeros((len(e), size, size, 3), np.uint8), np.zeros(len(e), bool)) for e in episodes]
    generator = torch.Generator(device=prophet.device).manual_seed(int(seed))
    with tqdm(total=len(sampler), desc="imagined views", unit="frame", disable=not show_progress) as bar:
        for first in range(0, len(sampler), batch_size):
            indices = range(first, min(first + batch_size, len(sampler)))
            batch = sampler.batch(indices)
            clip = prophet.generate(batch["current_frame"], batch["history_frames"], batch["actions"], num_steps,
                                    generator, action_frames=batch.get("action_frames"),
                                    calibrated=batch.get("calibrated"))
            last = clip[:, -1].round().clamp(0, 255).to(torch.uint8).cpu().numpy()
            for frame, (episode, step) in zip(last, sampler.starts(indices)):
                views[episode].frames[step + span] = frame
                views[episode].valid[step + span] = True
            bar.update(len(indices))
    return views
