"""Rectified flow (flow matching), shared by the policy's action chunks and Prophet's video latents.

Kept apart from the models (diffusers-style): a model only predicts a velocity v(x_t, t, conditions);
this module owns the time grid, the noising of training targets, the Euler (ODE) update, Flow-GRPO's
ODE-to-SDE step and the per-step Gaussian log-probabilities that FA-GRPO and FlowScale need.

Conventions (pi0): x_t = t * eps + (1 - t) * x0, t = 1 is pure noise, target velocity u = eps - x0.
Sampling integrates from t = 1 to t = 0 in K steps, sigma_k = 1 - k / K, dt_k = sigma_{k+1} - sigma_k < 0.
A time shift s > 1 (Wan / SD3; Prophet's ``timestep_shift``) spends more of the schedule at high noise,
which large frames need: sigma' = s * sigma / (1 + (s - 1) * sigma), applied to training times and the
sampling grid alike. The policy samples unshifted (s = 1).

SDE step (Flow-GRPO, noise level `a`):
    std_k  = a * sqrt(sigma / (1 - sigma))          (1 - sigma_{k+1} in the denominator at sigma = 1)
    mean_k = x * (1 + std_k^2 / (2 sigma) * dt) + v * (1 + std_k^2 (1 - sigma) / (2 sigma)) * dt
    x'     = mean_k + std_k * sqrt(-dt) * eps
and log p(x' | x) is the Gaussian density N(mean_k, std_k^2 |dt| I). We SUM it over every action
element of the chunk (horizon x action_dim), giving one log-probability per chunk and step: the
action-level likelihood FA-GRPO forms is then a sum over steps (see prophrl_trainer).
"""

from __future__ import annotations

import dataclasses
import math

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def seeded_draw(draw, shape, generator: torch.Generator | None, device=None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``draw`` (torch.rand or torch.randn) of `shape` on the generator's device, then moved to `device`: a CPU
    generator keeps its seeded stream whatever device the model is on, and a CUDA generator draws on its GPU."""
    source = generator.device if generator is not None else device
    return draw(shape, generator=generator, device=source, dtype=dtype).to(device)


@dataclasses.dataclass(frozen=True)
class SDEStep:
    """One stochastic denoising step for a batch: (B, H, D) tensors and (B,) log-probabilities."""

    sample: torch.Tensor    # x_{k+1}
    mean: torch.Tensor      # mean_k
    std: torch.Tensor       # scalar tensor: std_k * sqrt(|dt_k|), the Gaussian's standard deviation
    log_prob: torch.Tensor  # (B,), summed over the chunk's elements


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How an action chunk is sampled: K = num_steps Euler steps from noise to actions; noise_level is the
    SDE's `a` (mode sde: Flow-GRPO's exploration, its log-probs and FlowScale's weights). One object goes to
    sampling, to re-scoring a stored path and to the policy update; a policy checkpoint records it."""

    num_steps: int = 10
    noise_level: float = 0.7

    def __post_init__(self):
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"sampler num_steps must be an integer >= 1, got {self.num_steps!r}")
        if not (isinstance(self.noise_level, (int, float)) and math.isfinite(self.noise_level)
                and self.noise_level > 0):
            raise ValueError(f"sampler noise_level must be a number > 0, got {self.noise_level!r}")

    def step_noise_variance(self) -> torch.Tensor:
        return step_noise_variance(self.num_steps, self.noise_level)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    if shift == 1.0:
        return sigmas
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sigmas(num_steps: int, shift: float = 1.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """sigma_0 = 1 > sigma_1 > ... > sigma_K = 0 (K + 1 values), shifted by `shift`. K = 0 gives [1]: no step,
    the output is the noise."""
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if num_steps == 0:
        return torch.ones(1, device=device, dtype=dtype)
    return shift_sigmas(torch.linspace(1.0, 0.0, num_steps + 1, device=device, dtype=dtype), shift)


def sample_training_times(batch: int, shift: float = 1.0, generator: torch.Generator | None = None,
                          device=None) -> torch.Tensor:
    """t ~ U(0, 1), shifted: one diffusion time per sample, (B,)."""
    t = seeded_draw(torch.rand, (batch,), generator, device, torch.float64)
    return shift_sigmas(t, shift).to(dtype=torch.float32)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t * noise + (1 - t) * x0 with t (B,) broadcast over the remaining dims."""
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    return t * noise + (1 - t) * x0


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def sde_std(sigma: float, sigma_next: float, noise_level: float) -> float:
    """std_k of Flow-GRPO's SDE (before the sqrt(|dt|) factor)."""
    denominator = 1.0 - (sigma_next if sigma >= 1.0 else sigma)
    return noise_level * math.sqrt(sigma / denominator)


def step_noise_variance(num_steps: int, noise_level: float) -> torch.Tensor:
    """sigma_k^2 := std_k^2 * |dt_k| for every step k: the variance FlowScale weights by."""
    grid = sigmas(num_steps, dtype=torch.float64)
    out = []
    for k in range(num_steps):
        s, s_next = float(grid[k]), float(grid[k + 1])
        out.append(sde_std(s, s_next, noise_level) ** 2 * (s - s_next))
    return torch.tensor(out)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    return x + (sigma_next - sigma) * velocity


def sde_mean(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float, noise_level: float):
    """(mean_k, std_k * sqrt(|dt|)) of the SDE transition from x at sigma to sigma_next."""
    dt = sigma_next - sigma
    std = sde_std(sigma, sigma_next, noise_level)
    mean = (x * (1 + std**2 / (2 * sigma) * dt)
            + velocity * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt)
    return mean, std * math.sqrt(-dt)


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log N(sample; mean, std^2 I) summed over all non-batch dims -> (B,).

    mask (broadcastable to sample, 1 = counted) leaves out elements that carry no signal, such as
    the zero-padded second end effector of a single-arm robot.
    """
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    per_element = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    if mask is not None:
        per_element = per_element * mask
    return per_element.flatten(1).sum(dim=1)


def sde_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float, noise_level: float,
             generator: torch.Generator | None = None) -> SDEStep:
    mean, std = sde_mean(x, velocity, sigma, sigma_next, noise_level)
    noise = seeded_draw(torch.randn, x.shape, generator, x.device, x.dtype)
    sample = mean + std * noise
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device)
    return SDEStep(sample, mean, std_t, gaussian_log_prob(sample, mean, std_t))
