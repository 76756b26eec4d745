"""A contextual bandit with a flow-matching policy: a known optimum to check FA-GRPO against.

Context c ~ U[-1, 1]^2; the policy emits a chunk of shape (horizon, dim); reward is
exp(-||a - target(c)||^2 / width^2) averaged over the chunk, with target(c) = 0.6 * c + shift. The
optimum is reward 1. The policy has the same sampling API as prophrl_policy's VLAPolicy.

ExploitableReward stands for a learned reward (world model + judge) with an error away from the
demonstrations: RL on it, unguarded, finds the error and the true reward collapses.
"""

from __future__ import annotations

import torch
from torch import nn

from prophrl_nn import flow_matching as fm
from prophrl_nn.flow_matching import SamplerConfig
from prophrl_policy.modeling_vla import ChunkSample, sinusoidal_embedding


class ToyFlowPolicy(nn.Module):
    def __init__(self, context_dim: int = 2, horizon: int = 2, action_dim: int = 2, hidden: int = 64):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(horizon * action_dim + context_dim + hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, horizon * action_dim))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        features = torch.cat([x.flatten(1), context, sinusoidal_embedding(t, self.hidden)], dim=1)
        return self.net(features).view_as(x)

    def compute_loss(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(actions)
        t = torch.rand(actions.shape[0]) * 0.999 + 0.001
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        return ((self.velocity(x_t, t, context) - (noise - actions)) ** 2).mean()

    @torch.no_grad()
    def predict_action_chunk(self, context, mode="ode", sampler: SamplerConfig = SamplerConfig(),
                             generator=None) -> ChunkSample:
        num_steps, noise_level = sampler.num_steps, sampler.noise_level
        b = context.shape[0]
        x = torch.randn(b, self.horizon, self.action_dim, generator=generator)
        grid = fm.sigmas(num_steps).tolist()
        latents, log_probs, means, stds = [x], [], [], []
        for k in range(num_steps):
            v = self.velocity(x, torch.full((b,), grid[k]), context)
            if mode == "ode":
                x = fm.euler_step(x, v, grid[k], grid[k + 1])
            else:
                step = fm.sde_step(x, v, grid[k], grid[k + 1], noise_level, generator)
                x = step.sample
                log_probs.append(step.log_prob)
                means.append(step.mean)
                stds.append(step.std)
            latents.append(x)
        stack = (lambda xs, d=1: torch.stack(xs, d) if xs else None)
        return ChunkSample(x, torch.stack(latents, 1), stack(log_probs), stack(means), stack(stds, 0))

    def sde_log_probs(self, context, latents, sampler: SamplerConfig = SamplerConfig()):
        k_steps, noise_level = latents.shape[1] - 1, sampler.noise_level
        grid = fm.sigmas(k_steps).tolist()
        b = latents.shape[0]
        log_probs, means, stds = [], [], []
        for k in range(k_steps):
            v = self.velocity(latents[:, k], torch.full((b,), grid[k]), context)
            mean, std = fm.sde_mean(latents[:, k], v, grid[k], grid[k + 1], noise_level)
            log_probs.append(fm.gaussian_log_prob(latents[:, k + 1], mean, std))
            means.append(mean)
            stds.append(std)
        return torch.stack(log_probs, 1), torch.stack(means, 1), torch.tensor(stds)


class ContextualBandit:
    def __init__(self, width: float = 0.3, shift: float = 0.5):
        self.width, self.shift = width, shift

    def sample_contexts(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(n, 2, generator=generator) * 2 - 1

    def target(self, context: torch.Tensor) -> torch.Tensor:
        return 0.6 * context + self.shift

    def reward(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        err = ((actions - self.target(context)[:, None, :]) ** 2).sum(-1)
        return torch.exp(-err / self.width**2).mean(-1)


class ExploitableReward:
    """The bandit's true reward plus a spurious bonus around target(c) + offset: a learned reward that is right
    on the demonstrations (actions near the target) and wrong off them. With bonus > 1 its optimum lies where
    the true reward is about 0."""

    def __init__(self, env: ContextualBandit, offset: tuple[float, float] = (0.45, -0.45), bonus: float = 2.0,
                 width: float = 0.35):
        self.env, self.bonus, self.width = env, bonus, width
        self.offset = torch.tensor(offset)

    def sample_demonstrations(self, n: int, horizon: int, spread: float = 0.08,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(contexts (n, 2), actions (n, horizon, 2)): the true target plus Gaussian noise of std `spread`."""
        contexts = self.env.sample_contexts(n, generator)
        target = self.env.target(contexts)[:, None, :].expand(-1, horizon, -1)
        return contexts, target + spread * torch.randn(n, horizon, 2, generator=generator)

    def reward(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        err = ((actions - (self.env.target(context) + self.offset)[:, None, :]) ** 2).sum(-1)
        return self.env.reward(context, actions) + self.bonus * torch.exp(-err / self.width**2).mean(-1)
