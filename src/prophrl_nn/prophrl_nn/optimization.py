"""The supervised trainers' optimisation step and learning-rate schedule (policy SFT and distillation, the reward
judge): one owner for each."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from prophrl_common.weights import require_finite_loss


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Learning-rate factor: linear warm-up over `warmup_steps`, times a cosine decay from 1 to 0 at `total_steps`
    (held at 0 after)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(warmup_steps, 1))
        * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))


def clipped_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule, params: Iterable[torch.Tensor],
                 grad_clip: float, what: str, step: int) -> float:
    """One optimiser step on `loss` with the gradients' global norm clipped to `grad_clip`, then one schedule step;
    a NaN / inf loss raises NonFiniteError first (nothing is stepped). Returns the loss value."""
    value = loss.item()
    require_finite_loss(value, what, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    schedule.step()
    return value
