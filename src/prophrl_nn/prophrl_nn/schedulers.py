"""Rectified-flow (flow-matching) schedule for Prophet's latent video denoiser.

Kept apart from the model, diffusers-style: the model predicts a velocity v(x_t, t, conditions);
this module owns the time grid, the noising of training targets and the Euler update. Conventions
match prophrl_nn.flow_matching (pi0): x_t = t * noise + (1 - t) * x0, t = 1 is pure noise,
target velocity u = noise - x0; sampling integrates from t = 1 to t = 0 with dt < 0.

A time shift s > 1 (Wan / SD3) spends more of the schedule at high noise, which large frames need:
sigma' = s * sigma / (1 + (s - 1) * sigma). It is applied to training times and the sampling grid alike.
"""

from __future__ import annotations

import torch


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    if shift == 1.0:
        return sigmas
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sampling_sigmas(num_steps: int, shift: float = 1.0) -> list[float]:
    """sigma_0 = 1 > ... > sigma_K = 0 (K + 1 values). K = 0 gives [1.0]: no step, the output is the noise."""
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if num_steps == 0:
        return [1.0]
    grid = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift_sigmas(grid, shift).tolist()


def sample_training_times(batch: int, shift: float = 1.0, generator: torch.Generator | None = None,
                          device=None) -> torch.Tensor:
    """t ~ U(0, 1), shifted: one diffusion time per sample, (B,)."""
    t = torch.rand(batch, generator=generator, dtype=torch.float64)
    return shift_sigmas(t, shift).to(device=device, dtype=torch.float32)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t * noise + (1 - t) * x0 with t (B,) broadcast over the remaining dims."""
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    return t * noise + (1 - t) * x0


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    return x + (sigma_next - sigma) * velocity
