"""Weight files (safetensors): never written with a NaN or an infinity in them.

A diverged run (a learning rate too high, a bad batch) makes weights non-finite; a checkpoint of them
would replace a good one and poison whatever loads it. Every writer of model or optimizer weights
saves through :func:`save_finite_safetensors`, which refuses before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class NonFiniteError(FloatingPointError):
    """A loss or a weight became NaN / inf: training stopped, nothing non-finite was saved."""


def non_finite_tensors(tensors: Mapping) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity, in the mapping's order."""
    import torch

    return [name for name, tensor in tensors.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def require_finite(tensors: Mapping, what: str) -> None:
    """Raise NonFiniteError naming `what` when any floating-point tensor is not finite."""
    bad = non_finite_tensors(tensors)
    if bad:
        raise NonFiniteError(f"{what}: {len(bad)} of {len(tensors)} tensors hold NaN/inf (first: {bad[0]}); "
                             "training diverged (lower the learning rate), nothing was saved")


def require_finite_loss(loss: float, what: str, step: int) -> None:
    """Raise NonFiniteError when a training loss is NaN / inf (before the step that would spread it)."""
    if not (loss == loss and abs(loss) != float("inf")):
        raise NonFiniteError(f"{what}: the loss became {loss} at step {step}; training diverged (lower the "
                             "learning rate), nothing non-finite was saved")


def save_finite_safetensors(tensors: Mapping, path: str | Path, metadata: dict[str, str] | None, what: str) -> None:
    """safetensors.torch.save_file, after checking every floating-point tensor is finite."""
    from safetensors.torch import save_file

    require_finite(tensors, what)
    save_file(dict(tensors), str(path), metadata=metadata)


def load_safetensors(path: str | Path, device: str = "cpu") -> dict:
    """safetensors.torch.load_file; a corrupt file is a ConfigError naming it. A Ctrl-C during the load is
    held until the load is over and then raised as KeyboardInterrupt: raised inside the torch/safetensors
    C code it surfaces as an unrelated error ("could not determine the shape ..."), which would read as a
    corrupt checkpoint."""
    import signal
    import threading

    from safetensors.torch import load_file

    from prophrl_common.config_io import ConfigError

    interrupted = []
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True)) if in_main else None
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        if not interrupted:
            raise ConfigError(f"{path}: cannot read weights: {exc}") from exc
        state = None
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    return state
