"""Training state that resumes exactly, as safetensors + JSON (never pickle): optimizer and RNG states.

optimizer_state_to_files splits ``optimizer.state_dict()`` into tensors (for safetensors, named
``state.<param index>.<key>``) and a JSON-able remainder (param_groups, non-tensor per-parameter state);
optimizer_state_from_files restores it into an optimizer built over the same parameters. The RNG helpers
give the Python and numpy generators' states as JSON-able values (torch generators' states are uint8
tensors: ``torch.Generator.get_state()``). The RL checkpoints (prophrl_trainer.checkpointing) and
Prophet's pretraining state (prophrl_worldmodel.pretrain_state) are written with them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from prophrl_common.config_io import ConfigError


def optimizer_state_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split optimizer.state_dict() into tensors (for safetensors) and a JSON-able remainder."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = json_value(value, f"optimizer state {index}.{key}")
    groups = []
    for group in state_dict["param_groups"]:
        groups.append({key: json_value(value, f"optimizer param_group {key}") for key, value in group.items()})
    return tensors, {"type": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}


def optimizer_state_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                               meta: dict) -> None:
    """Inverse of optimizer_state_to_files, into an optimizer built over the same parameters."""
    if meta.get("type") != type(optimizer).__name__:
        raise ConfigError(f"the saved optimizer is {meta.get('type')}, this run uses {type(optimizer).__name__}")
    current = optimizer.state_dict()["param_groups"]
    saved = meta["param_groups"]
    if len(saved) != len(current) or any(len(s["params"]) != len(c["params"]) for s, c in zip(saved, current)):
        raise ConfigError("the saved optimizer state does not match the trainable parameters")
    groups = []
    for saved_group, current_group in zip(saved, current):
        group = dict(saved_group)
        for key, value in group.items():  # JSON turned tuples (e.g. Adam's betas) into lists
            if isinstance(current_group.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
        groups.append(group)
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def json_value(value, where: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [json_value(v, where) for v in value]
    raise ConfigError(f"{where}: cannot store {type(value).__name__} as JSON")


# ----- RNG states -------------------------------------------------------------------------------------

def python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(state: list) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))


def numpy_rng_state(generator: np.random.Generator) -> dict:
    return generator.bit_generator.state


def set_numpy_rng_state(generator: np.random.Generator, state: dict) -> None:
    generator.bit_generator.state = state
