import math

import cv2
import numpy as np
import pytest

from prophrl_worldmodel.metrics import (VideoMetrics, aggregate_by_horizon, flow_agreement, optical_flow, psnr, ssim,
                                        video_metrics)


def _texture(size=64, seed=0):
    """Smooth random RGB texture: something Farneback can track."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


def _shifted(image, dx, dy):
    return np.roll(np.roll(image, dy, axis=0), dx, axis=1)


def _interior(flow, margin=10):
    return flow[margin:-margin, margin:-margin]


def test_identical_frames_are_perfect():
    frame = _texture()
    assert psnr(frame, frame) == math.inf
    assert ssim(frame, frame) == pytest.approx(1.0)
    clip = np.stack([frame, _shifted(frame, 2, 0), _shifted(frame, 4, 0)])
    result = video_metrics(clip, clip)
    assert np.all(result.psnr == math.inf) and np.allclose(result.ssim, 1.0)
    assert np.all(result.flow_epe == 0.0)
    assert result.flow_cos == pytest.approx([1.0, 1.0], abs=1e-6)


def test_psnr_of_a_known_error():
    target = np.full((16, 16, 3), 100, np.uint8)
    pred = target + 10  # MSE 100
    assert psnr(pred, target) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(pred.astype(np.float64) / 255, target / 255, data_range=1.0) == pytest.approx(psnr(pred, target))


def test_ssim_of_constant_images_has_the_closed_form():
    # no variance: SSIM reduces to the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    a, b = np.full((32, 32, 3), 100.0), np.full((32, 32, 3), 150.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))


def test_ssim_decreases_with_distortion_and_is_symmetric():
    frame = _texture()
    rng = np.random.default_rng(1)
    slightly = np.clip(frame + rng.normal(0, 5, frame.shape), 0, 255)
    heavily = np.clip(frame + rng.normal(0, 40, frame.shape), 0, 255)
    assert 1.0 > ssim(slightly, frame) > ssim(heavily, frame) > 0.0
    assert ssim(heavily, frame) == pytest.approx(ssim(frame, heavily))
    with pytest.raises(ValueError):
        ssim(frame[:8, :8], frame[:8, :8])


def test_flow_of_a_known_shift():
    frame = _texture()
    flow = optical_flow(frame, _shifted(frame, 3, -2))
    assert flow.shape == (64, 64, 2)
    median = np.median(_interior(flow).reshape(-1, 2), axis=0)
    assert median == pytest.approx((3.0, -2.0), abs=0.3)


def test_opposite_motion_has_cosine_minus_one():
    frame = _texture()
    real = optical_flow(frame, _shifted(frame, 3, 0))
    pred = optical_flow(frame, _shifted(frame, -3, 0))
    epe, cos = flow_agreement(_interior(real), _interior(pred), motion_threshold=1.0)
    assert cos < -0.9
    assert epe == pytest.approx(6.0, abs=1.0)


def test_cosine_is_nan_without_real_motion_and_zero_prediction_scores_zero():
    still = np.zeros((8, 8, 2))
    moving = np.zeros((8, 8, 2))
    moving[..., 0] = 2.0
    epe, cos = flow_agreement(still, moving)
    assert epe == pytest.approx(2.0) and math.isnan(cos)
    epe, cos = flow_agreement(moving, still)
    assert epe == pytest.approx(2.0) and cos == 0.0


def test_estimator_noise_in_a_frozen_prediction_scores_zero_not_its_random_direction():
    """Regression: Farneback gives ~0.02 px flow between identical frames; its direction must not count."""
    moving = np.zeros((8, 8, 2))
    moving[..., 0] = 2.0
    noise = np.zeros((8, 8, 2))
    noise[..., 0] = 0.02   # exactly aligned with the real motion, but far below the motion threshold
    assert flow_agreement(moving, noise)[1] == 0.0
    assert flow_agreement(moving, -noise)[1] == 0.0
    assert flow_agreement(moving, moving)[1] == pytest.approx(1.0)


def test_aggregate_by_horizon_averages_per_step_and_skips_nan():
    a = VideoMetrics(np.array([30.0, 20.0]), np.array([0.9, 0.8]), np.array([1.0]), np.array([np.nan]))
    b = VideoMetrics(np.array([10.0, 40.0]), np.array([0.7, 0.6]), np.array([3.0]), np.array([0.5]))
    c = VideoMetrics(np.array([20.0, 30.0]), np.array([0.8, 0.7]), np.array([2.0]), np.array([np.nan]))
    out = aggregate_by_horizon([a, b, c])
    np.testing.assert_allclose(out["psnr"], [20.0, 30.0])
    np.testing.assert_allclose(out["ssim"], [0.8, 0.7])
    np.testing.assert_allclose(out["flow_epe"], [2.0])
    np.testing.assert_allclose(out["flow_cos"], [0.5])
    assert np.isnan(aggregate_by_horizon([a, c])["flow_cos"][0])
    with pytest.raises(ValueError):
        aggregate_by_horizon([])


def test_video_metrics_rejects_mismatched_clips():
    clip = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError):
        video_metrics(clip, clip[:2])
