"""The one reduction of camera frames to a model's square resolution.

Prophet's training frames are reduced with it when a dataset is loaded (prophrl_data.shards), and a policy
with a camera_size sees every camera frame through it (prophrl_policy.modeling_vla.camera_view), so what
Prophet imagines and what the robot's camera gives the policy are the same kind of pixels.
"""

from __future__ import annotations

import numpy as np


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 frames resized (cv2.INTER_AREA) to (N, size, size, 3); frames already that size as
    they are."""
    if frames.shape[1:3] == (size, size):
        return frames
    import cv2

    return np.stack([cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) for frame in frames])


def resize_images(images, size: int):
    """The same reduction for (N, 3, H, W) float torch tensors (any device): area averaging when reducing (what
    cv2.INTER_AREA computes, to rounding, for whole-number factors), bilinear when enlarging; images already
    size x size as they are."""
    import torch.nn.functional as F

    if images.shape[-2:] == (size, size) or not images.shape[0]:
        return images
    if images.shape[-2] > size or images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
