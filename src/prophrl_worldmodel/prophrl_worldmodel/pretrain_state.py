"""Prophet pretraining's resumable state: an interrupted `prophrl worldmodel pretrain` continues where it stopped.

With a state directory, :func:`prophrl_worldmodel.training.pretrain` saves every ``every`` steps (and once
when the denoiser phase begins) what the next step needs::

    model.safetensors        the whole model state (weights and fitted latent / action statistics)
    optimizer.safetensors    the optimizer state of the current phase (prophrl_common.training_state)
    rng.safetensors          the torch global RNG and the training noise generator, uint8
    state.json               format, the run it belongs to, phase ("vae" | "denoiser") and step, the
                             scheduler, the numpy RNG, the losses and seconds so far, the optimizer's
                             JSON half

Run again with the same directory, it restores all of it and the run goes on as if never stopped: the
same batches, noise and weights as an uninterrupted run. Saving is atomic (prophrl_common.atomic_io), so a
kill at any moment leaves the previous state whole. A state belongs to one run: another config, dataset,
step count, batch size, learning rate or seed is refused with one clear error, and a directory that holds
something else is never written to.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from prophrl_common.atomic_io import atomic_directory
from prophrl_common.config_io import ConfigError
from prophrl_common.training_state import (json_value, numpy_rng_state, optimizer_state_from_files,
                                           optimizer_state_to_files, set_numpy_rng_state)
from prophrl_common.weights import require_finite, save_finite_safetensors

FORMAT = "prophrl-prophet-pretrain-state-v1"
STATE_JSON = "state.json"
MODEL_TENSORS = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
RNG_TENSORS = "rng.safetensors"
PHASES = ("vae", "denoiser")


@dataclasses.dataclass
class Progress:
    """Where the run stands: the phase and the number of its steps done, and what was measured so far."""

    phase: str = "vae"
    step: int = 0
    vae_losses: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    vae_seconds: float = 0.0
    denoiser_seconds: float = 0.0


@dataclasses.dataclass
class Restored:
    progress: Progress
    model: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict
    scheduler: dict
    rng: dict[str, torch.Tensor]
    numpy_rng: dict


class PretrainState:
    """One run's state directory: save() every `every` steps, restore() once at the start."""

    def __init__(self, directory: str | Path, run: dict, every: int):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"the state is saved every N steps, N >= 1; got {every!r}")
        self.directory = Path(directory)
        self.run = json.loads(json.dumps(run))   # JSON's view of it, as it is compared after a reload
        self.every = every
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"{self.directory}: not a directory")
        if self.directory.is_dir() and any(self.directory.iterdir()) and not (self.directory / STATE_JSON).is_file():
            raise ConfigError(f"{self.directory}: holds files that are not a Prophet pretraining state; "
                              "give an empty or new directory")

    def due(self, step_done: int, steps: int) -> bool:
        """Save after this many steps of a phase of `steps`? (Not after the last: the phase ends there.)"""
        return step_done % self.every == 0 and step_done < steps

    def save(self, progress: Progress, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, rng: np.random.Generator,
             generator: torch.Generator) -> None:
        model_tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
        require_finite(model_tensors, f"the pretraining state at {progress.phase} step {progress.step}")
        optimizer_tensors, optimizer_meta = optimizer_state_to_files(optimizer)
        state = {"format": FORMAT, "run": self.run, **dataclasses.asdict(progress),
                 "scheduler": {k: json_value(v, f"scheduler {k}") for k, v in scheduler.state_dict().items()},
                 "numpy_rng": numpy_rng_state(rng), "optimizer": optimizer_meta}
        with atomic_directory(self.directory) as tmp:
            save_file(model_tensors, str(tmp / MODEL_TENSORS), metadata={"format": FORMAT})
            save_finite_safetensors(optimizer_tensors, tmp / OPTIMIZER_TENSORS, {"format": FORMAT},
                                    "the pretraining optimizer state")
            save_file({"torch": torch.get_rng_state(), "generator": generator.get_state()}, str(tmp / RNG_TENSORS),
                      metadata={"format": FORMAT})
            (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))

    def restore(self) -> Restored | None:
        """The saved state of this run, or None when the directory holds none yet."""
        path = self.directory / STATE_JSON
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a Prophet pretraining state (format {FORMAT!r})")
        saved_run = state.get("run", {})
        differ = sorted(k for k in set(saved_run) | set(self.run) if saved_run.get(k) != self.run.get(k))
        if differ:
            raise ConfigError(f"{self.directory} holds the state of another pretraining run (its {', '.join(differ)} "
                              "differ); give the same arguments to continue it, or another --state-dir")
        fields = {f.name for f in dataclasses.fields(Progress)}
        progress = Progress(**{k: v for k, v in state.items() if k in fields})
        if progress.phase not in PHASES or not isinstance(progress.step, int) or progress.step < 0:
            raise ConfigError(f"{path}: phase {progress.phase!r} step {progress.step!r} is not a training position")
        try:
            model = load_file(str(self.directory / MODEL_TENSORS))
            optimizer = load_file(str(self.directory / OPTIMIZER_TENSORS))
            rng = load_file(str(self.directory / RNG_TENSORS))
        except Exception as exc:  # safetensors raises its own error types
            raise ConfigError(f"{self.directory}: cannot read the pretraining state: {exc}") from exc
        require_finite(model, f"{self.directory / MODEL_TENSORS}")
        return Restored(progress, model, optimizer, state["optimizer"], state["scheduler"], rng, state["numpy_rng"])


def load_model_into(restored: Restored, model: torch.nn.Module, where: Path) -> None:
    """The saved weights and statistics alone (a phase the resumed run skips has nothing else to restore)."""
    try:
        model.load_state_dict(restored.model)
    except RuntimeError as exc:
        raise ConfigError(f"{where}: the saved model does not fit this config ({exc})") from exc


def resume_into(restored: Restored, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, rng: np.random.Generator,
                generator: torch.Generator, where: Path) -> None:
    """Load a restored state into the run's freshly built model, optimizer, scheduler and generators."""
    load_model_into(restored, model, where)
    optimizer_state_from_files(optimizer, restored.optimizer_tensors, restored.optimizer_meta)
    scheduler.load_state_dict(restored.scheduler)
    set_numpy_rng_state(rng, restored.numpy_rng)
    torch.set_rng_state(restored.rng["torch"])
    generator.set_state(restored.rng["generator"])
