"""Data-parallel RL: the rank context and the policy's log-probabilities through DistributedDataParallel.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from prophrl_policy.modeling_vla import VLAPolicy



@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> "DistContext":
        """Under torchrun (WORLD_SIZE > 1): join the process group (gloo on CPU, nccl on CUDA)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self.enabled or not values:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.cpu().tolist())}

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


class _LogProbs(nn.Module):
    """forward = policy.sde_log_probs, so DistributedDataParallel can wrap what the update differentiates."""

    def __init__(self, policy: VLAPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, obs, latents, sampler):
        return self.policy.sde_log_probs(obs, latents, sampler)


class DataParallelPolicy:
    """What policy_update needs (sde_log_probs, parameters, train, action_mask), through DDP."""

    def __init__(self, policy: VLAPolicy, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        self.policy = policy
        self.ddp = DistributedDataParallel(_LogProbs(policy), device_ids=[device] if device.type == "cuda" else None)

    def sde_log_probs(self, obs, latents, sampler):
        return self.ddp(obs, latents, sampler)

    def parameters(self):
        return self.policy.parameters()

    def train(self, mode: bool = True):
        self.ddp.train(mode)
        return self

    @property
    def action_mask(self):
        return self.policy.action_mask
