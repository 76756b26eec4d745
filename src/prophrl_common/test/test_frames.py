import numpy as np
import pytest
import torch

from prophrl_common.frames import resize_frames, resize_images


@pytest.mark.parametrize("size", [32, 64, 16])
def test_the_torch_reduction_is_the_frames_reduction_to_rounding(size):
    frames = np.random.default_rng(size).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    reduced = resize_frames(frames, size)
    assert reduced.shape == (3, size, size, 3) and reduced.dtype == np.uint8
    images = resize_images(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size)
    assert np.abs(images.permute(0, 2, 3, 1).numpy() - reduced).max() <= 0.5 + 1e-3


def test_frames_already_at_size_are_kept_and_smaller_ones_are_enlarged():
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert resize_frames(frames, 16) is frames
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    assert resize_images(images, 16) is images
    enlarged = resize_images(images, 32)
    torch.testing.assert_close(enlarged, torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear",
                                                                         align_corners=False))
