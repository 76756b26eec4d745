"""World-model video metrics: PSNR, SSIM and optical-flow agreement (OpenCV Farneback).

Frames are (H, W, 3) RGB (or (H, W) gray) arrays in [0, 255], uint8 or float; clips are (T, H, W, 3).

- PSNR = 10 log10(R^2 / MSE), R = data_range; inf for identical frames.
- SSIM follows Wang et al. 2004 (and scikit-image with gaussian_weights=True,
  use_sample_covariance=False): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, the SSIM
  map averaged over the image without a 5-pixel border (where the window would leave the image)
  and over colour channels.
- Flow agreement for a frame pair: Farneback flow of the real pair and of the predicted pair, both
  (H, W, 2) in pixels (dx, dy). EPE = mean over all pixels of ||f_real - f_pred||. cos = mean cosine
  similarity of the two flow vectors over pixels where the REAL motion is significant,
  ||f_real|| > motion_threshold (nan when no pixel moves); a predicted flow below the same threshold (a frozen prediction's
  estimator noise) counts as cos 0.
- ``video_metrics`` scores one clip per frame (PSNR, SSIM) and per consecutive pair (flow);
  ``aggregate_by_horizon`` averages many clips per horizon step. To score the motion into the first
  predicted frame, prepend the shared start frame to both clips.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import cv2
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


@dataclasses.dataclass(frozen=True)
class FarnebackParams:
    """cv2.calcOpticalFlowFarneback arguments (OpenCV's documented example values)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2


@dataclasses.dataclass(frozen=True)
class VideoMetrics:
    psnr: np.ndarray      # (T,) per frame
    ssim: np.ndarray      # (T,) per frame
    flow_epe: np.ndarray  # (T - 1,) per consecutive frame pair (t - 1, t)
    flow_cos: np.ndarray  # (T - 1,), nan where the real pair has no significant motion


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {target.shape}")
    return pred, target


def psnr(pred, target, data_range: float = 255.0) -> float:
    pred, target = _pair(pred, target)
    mse = float(np.mean((pred - target) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(pred, target, data_range: float = 255.0) -> float:
    pred, target = _pair(pred, target)
    if pred.ndim not in (2, 3) or min(pred.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs (H, W) or (H, W, C) frames of at least {SSIM_WINDOW} px, got {pred.shape}")
    if pred.ndim == 2:
        pred, target = pred[..., None], target[..., None]
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    border = (SSIM_WINDOW - 1) // 2

    def blur(image):
        return cv2.GaussianBlur(image, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    scores = []
    for channel in range(pred.shape[2]):
        x, y = np.ascontiguousarray(pred[..., channel]), np.ascontiguousarray(target[..., channel])
        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x**2
        var_y = blur(y * y) - mu_y**2
        cov = blur(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        scores.append(ssim_map[border:-border, border:-border].mean())
    return float(np.mean(scores))


def _gray_uint8(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    if frame.ndim == 3:
        frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return frame


def optical_flow(prev_frame, next_frame, params: FarnebackParams = FarnebackParams()) -> np.ndarray:
    """Dense Farneback flow from prev_frame to next_frame: (H, W, 2) float32, (dx, dy) in pixels."""
    return cv2.calcOpticalFlowFarneback(_gray_uint8(prev_frame), _gray_uint8(next_frame), None, params.pyr_scale,
                                        params.levels, params.winsize, params.iterations, params.poly_n,
                                        params.poly_sigma, 0)


def flow_agreement(real_flow: np.ndarray, pred_flow: np.ndarray, motion_threshold: float = 0.5) -> tuple[float, float]:
    """(EPE, cos) between two (H, W, 2) flows; see the module docstring."""
    real_flow, pred_flow = _pair(real_flow, pred_flow)
    epe = float(np.linalg.norm(real_flow - pred_flow, axis=-1).mean())
    real_norm = np.linalg.norm(real_flow, axis=-1)
    moving = real_norm > motion_threshold
    if not moving.any():
        return epe, float("nan")
    pred_norm = np.linalg.norm(pred_flow, axis=-1)
    cosine = (real_flow * pred_flow).sum(axis=-1) / np.maximum(real_norm * pred_norm, 1e-12)
    # Predicted motion below the threshold is "no motion": cosine 0, not the direction of flow-estimator
    # noise (a frozen prediction would otherwise score a random +-1 wherever the real scene moves).
    cosine = np.where(pred_norm > motion_threshold, cosine, 0.0)
    return epe, float(cosine[moving].mean())


def video_metrics(real_clip, pred_clip, motion_threshold: float = 0.5,
                  params: FarnebackParams = FarnebackParams(), data_range: float = 255.0) -> VideoMetrics:
    """Per-frame PSNR/SSIM and per-pair flow agreement of a predicted clip against the real one."""
    real_clip, pred_clip = np.asarray(real_clip), np.asarray(pred_clip)
    if real_clip.shape != pred_clip.shape or real_clip.ndim != 4:
        raise ValueError(f"clips must both be (T, H, W, C), got {real_clip.shape} and {pred_clip.shape}")
    frames = range(len(real_clip))
    epe, cos = [], []
    for t in frames[1:]:
        pair = flow_agreement(optical_flow(real_clip[t - 1], real_clip[t], params),
                              optical_flow(pred_clip[t - 1], pred_clip[t], params), motion_threshold)
        epe.append(pair[0])
        cos.append(pair[1])
    return VideoMetrics(psnr=np.array([psnr(pred_clip[t], real_clip[t], data_range) for t in frames]),
                        ssim=np.array([ssim(pred_clip[t], real_clip[t], data_range) for t in frames]),
                        flow_epe=np.array(epe), flow_cos=np.array(cos))


def aggregate_by_horizon(results: Sequence[VideoMetrics]) -> dict[str, np.ndarray]:
    """Mean over clips per horizon step (nan entries, e.g. cos without motion, are skipped)."""
    if not results:
        raise ValueError("no clips to aggregate")
    out = {}
    for field in dataclasses.fields(VideoMetrics):
        values = np.stack([getattr(r, field.name) for r in results])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step with no motion in any clip stays nan
            out[field.name] = np.nanmean(values, axis=0)
    return out
