"""Atomic, resumable RL checkpoints: safetensors + JSON, never pickle.

One directory per checkpoint, ``RUN_DIR/checkpoints/update_000010/``::

    policy/                  VLAPolicy.save_pretrained (config.json, norm_stats.json, model.safetensors,
                             embodiment.json: robot / action space / state layout, kept from the SFT
                             policy): what LoadPolicy and `prophrl policy eval` take
    optimizer.safetensors    every tensor of the optimizer state ("state.<param index>.<key>")
    optimizer.json           param_groups and the non-tensor per-parameter state
    rng.safetensors          torch RNG states (the global CPU RNG and named torch.Generators), uint8
    trainer_state.json       format, update count, numpy / python RNG states, metrics history, extras
    rl_config.json           the RL config of the run

Writing is atomic: everything goes into a hidden temporary sibling (``.tmp-update_000010-<pid>``),
every file and directory is fsynced, then the directory is renamed into place and the parent is
fsynced. A crash at any moment leaves either the previous set of checkpoints or the new one, never a
half-written ``update_*``. Weights or optimizer state holding NaN / inf are never written
(NonFiniteError before anything is written), so a diverged run can never rotate a good checkpoint out
for a bad one. Old checkpoints beyond ``keep_last`` are first renamed to a hidden trash name and then deleted, so a crash during deletion cannot leave a partial ``update_*`` either; stale
temporaries and trash are removed by ``clean_stale``.

With a held-out imagined validation set (RLConfig.validation_states), the run directory also holds the
policy that scored best on it, ``RUN_DIR/best_policy/`` (a policy checkpoint plus ``selection.json``:
its update, 0 for the SFT policy itself, and its validation scores), replaced atomically whenever a later
evaluation beats it (save_selected_policy).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prophrl_common.atomic_io import atomic_directory
from prophrl_common.config_io import ConfigError
from prophrl_common.training_state import optimizer_state_from_files, optimizer_state_to_files
from prophrl_common.weights import save_finite_safetensors

FORMAT = "prophrl-rl-checkpoint-v1"
PREFIX = "update_"
_NAME = re.compile(r"^update_(\d{6,})$")
POLICY_DIR = "policy"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
RNG_TENSORS = "rng.safetensors"
STATE_JSON = "trainer_state.json"
CONFIG_JSON = "rl_config.json"
SELECTED_POLICY_DIR = "best_policy"
SELECTION_JSON = "selection.json"
MINED_CLIPS_DIR = "mined_clips"   # RUN_DIR/mined_clips: the rollouts' judged clips (Trainer mine_clips)


def checkpoint_name(update: int) -> str:
    return f"{PREFIX}{update:06d}"


def list_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """Committed checkpoints, oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_JSON).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    found = list_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


def clean_stale(checkpoint_dir: str | Path) -> None:
    """Remove temporaries and trash left by a crash (never a committed checkpoint)."""
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            if path.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(path, ignore_errors=True)


# ----- whole checkpoints ------------------------------------------------------------------------------

def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(checkpoint_dir: str | Path, update: int, policy, optimizer: torch.optim.Optimizer,
                    rng_tensors: dict[str, torch.Tensor], state: dict, rl_config_json: str,
                    keep_last: int = 3, keep_every: int = 0) -> Path:
    """Write checkpoint `update` atomically and keep the newest `keep_last`, and every checkpoint whose update
    is a multiple of `keep_every` (> 0: milestones along training). Returns its directory.

    rng_tensors: named uint8 RNG states (torch.Generator.get_state()); state: JSON-able trainer state
    (update count, numpy/python RNG states, history, ...).
    """
    if keep_last < 1 or keep_every < 0:
        raise ConfigError(f"keep_last must be >= 1 and keep_every >= 0, got {keep_last} and {keep_every}")
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / checkpoint_name(update)
    tmp = checkpoint_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        policy.save_pretrained(tmp / POLICY_DIR)
        tensors, meta = optimizer_state_to_files(optimizer)
        save_finite_safetensors(tensors, tmp / OPTIMIZER_TENSORS, {"format": FORMAT},
                                f"optimizer state of checkpoint {final.name}")
        (tmp / OPTIMIZER_JSON).write_text(json.dumps(meta, indent=1))
        save_file({k: v.contiguous().cpu() for k, v in rng_tensors.items()}, str(tmp / RNG_TENSORS),
                  metadata={"format": FORMAT})
        (tmp / STATE_JSON).write_text(json.dumps({"format": FORMAT, "update": int(update), **state}, indent=1))
        (tmp / CONFIG_JSON).write_text(rl_config_json)
        _fsync_tree(tmp)
        if final.exists():  # re-saving an update (e.g. after resuming from an older checkpoint)
            trash = checkpoint_dir / f".trash-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(checkpoint_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for number, path in list_checkpoints(checkpoint_dir)[:-keep_last]:
        if keep_every and number % keep_every == 0:
            continue
        trash = checkpoint_dir / f".trash-{path.name}-{os.getpid()}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, policy, optimizer: torch.optim.Optimizer | None
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore policy weights (and optimizer state) in place; return (rng tensors, trainer state)."""
    path = Path(path)
    for name in (STATE_JSON, RNG_TENSORS, OPTIMIZER_TENSORS, OPTIMIZER_JSON, POLICY_DIR):
        if not (path / name).exists():
            raise ConfigError(f"{path}: not an RL checkpoint (missing {name})")
    try:
        state = json.loads((path / STATE_JSON).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path / STATE_JSON}: unreadable: {exc}") from exc
    if state.get("format") != FORMAT:
        raise ConfigError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT!r}")
    from prophrl_policy.modeling_vla import VLAPolicy

    saved = VLAPolicy.from_pretrained(path / POLICY_DIR)  # validates config, shapes and finiteness
    if saved.config != policy.config:
        raise ConfigError(f"{path}: the checkpoint's policy config differs from the policy being trained")
    if None not in (saved.embodiment, policy.embodiment) and saved.embodiment != policy.embodiment:
        raise ConfigError(f"{path}: the checkpoint was trained for {saved.embodiment}, the policy being trained "
                          f"is for {policy.embodiment}")
    policy.load_state_dict(saved.state_dict())
    policy.norm_stats = saved.norm_stats
    policy.embodiment = saved.embodiment or policy.embodiment
    if optimizer is not None:
        try:
            tensors = load_file(str(path / OPTIMIZER_TENSORS))
            meta = json.loads((path / OPTIMIZER_JSON).read_text())
        except Exception as exc:  # safetensors has its own error types
            raise ConfigError(f"{path}: cannot read the optimizer state: {exc}") from exc
        optimizer_state_from_files(optimizer, tensors, meta)
    try:
        rng = load_file(str(path / RNG_TENSORS))
    except Exception as exc:
        raise ConfigError(f"{path / RNG_TENSORS}: cannot read: {exc}") from exc
    return rng, state


def save_selected_policy(run_dir: str | Path, policy, selection: dict) -> Path:
    """Write `policy` and its `selection` record (JSON-able: update, validation scores) as
    RUN_DIR/best_policy, replacing the previous one in one rename: the policy and its record never disagree."""
    final = Path(run_dir) / SELECTED_POLICY_DIR
    with atomic_directory(final) as tmp:
        policy.save_pretrained(tmp)
        (tmp / SELECTION_JSON).write_text(json.dumps(selection, indent=1))
    return final


def read_selection(run_dir: str | Path) -> dict | None:
    """The selection record of RUN_DIR/best_policy, or None when the run has none."""
    path = Path(run_dir) / SELECTED_POLICY_DIR / SELECTION_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the selection record: {exc}") from exc
