"""The one check of a torch device a user names (--device, a node's device parameter)."""

from __future__ import annotations

from prophrl_common.config_io import ConfigError


def torch_device(name: str, what: str = "--device"):
    """`name` ('cpu', 'cuda', 'cuda:1', ...) as a torch.device; ConfigError for a malformed name or a CUDA device
    on a machine without CUDA (or without that many GPUs)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{what} {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {name}, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{what} {name}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ConfigError(f"{what} {name}: only cpu and cuda devices are supported")
    return device


def device_option_ok(args) -> bool:
    """A CLI namespace's --device checked before any work (True; ConfigError for a device this machine lacks)."""
    if getattr(args, "device", None) is not None:
        torch_device(args.device)
    return True
