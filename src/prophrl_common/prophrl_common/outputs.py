"""Output directories of the training and conversion commands, checked before any work is done.

A command that writes a directory (`--out`) calls :func:`check_output_dir` first, so a bad `--out` is
one ConfigError before hours of training, never after. The rules, in order:

- `--out` is never one of the command's inputs, nor a directory holding one (replacing it would
  delete the input);
- a path that exists must be a directory;
- an existing, non-empty directory is replaced only when the caller passes ``overwrite`` (the user's
  explicit `--overwrite`), and even then only when it is a previous output of the same kind: every
  entry in it is a name that kind of output holds (:class:`OutputKind`), so nothing the command did
  not write is ever removed;
- a new directory must be creatable: its nearest existing ancestor is a writable directory.

Directories a command only adds to (a TensorBoard log, an RL run directory) are checked with
:func:`check_writable_dir`: the same rules except the replacement ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from prophrl_common.config_io import ConfigError


@dataclasses.dataclass(frozen=True)
class OutputKind:
    """A kind of output directory: what it is called in messages and every entry name it may hold."""

    what: str                 # e.g. "policy checkpoint"
    names: frozenset[str]     # every file / directory name such an output holds
    prefixes: tuple[str, ...] = ()  # and names starting so (files named after a label, e.g. fidelity_<label>.json)

    def foreign_entries(self, directory: Path) -> list[str]:
        """Names in `directory` that this kind of output never writes (sorted)."""
        return sorted(entry.name for entry in directory.iterdir()
                      if entry.name not in self.names and not entry.name.startswith(self.prefixes))


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def check_output_dir(out: str | Path, kind: OutputKind, *, overwrite: bool = False,
                     inputs: Iterable[str | Path | None] = (), option: str = "--out",
                     overwrite_flag: str = "--overwrite") -> Path:
    """Check that `out` may receive a new `kind` output (module docstring); returns it as given.

    Raises ConfigError with one line naming the problem. Creates nothing.
    """
    out = Path(out)
    check_writable_dir(out, inputs=inputs, option=option)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{option} {out} already exists (pass {overwrite_flag} to replace a previous "
                              f"{kind.what}, or choose another {option})")
        foreign = kind.foreign_entries(out)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(f"{option} {out} is not a previous {kind.what} (it holds {shown}): refusing to "
                              f"replace it even with {overwrite_flag}")
    return out


def check_run_dir(out: str | Path, kind: OutputKind, *, inputs: Iterable[str | Path | None] = (),
                  option: str = "--out") -> Path:
    """Check a directory a run keeps adding to (checkpoints, logs; resumable): it may be absent, empty or a
    previous run of `kind`, nothing else (check_writable_dir's rules too). Raises ConfigError."""
    out = check_writable_dir(out, inputs=inputs, option=option)
    if out.is_dir():
        foreign = kind.foreign_entries(out)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(f"{option} {out} is not a previous {kind.what} (it holds {shown}): choose another "
                              f"{option}")
    return out


def check_writable_dir(path: str | Path, *, inputs: Iterable[str | Path | None] = (), option: str = "--out") -> Path:
    """Check that files can be written into the directory `path` (existing or not) and that it neither is nor
    holds one of `inputs`; for directories that are added to, never replaced (a TensorBoard log, a run
    directory). Raises ConfigError; creates nothing."""
    path = Path(path)
    resolved = path.resolve()
    for source in inputs:
        if source is None or not Path(source).exists():  # nothing there to lose (a name, not a path)
            continue
        source = Path(source).resolve()
        if _inside(source, resolved):
            where = "is" if source == resolved else "holds"
            raise ConfigError(f"{option} {path} {where} the input {source}: write the output somewhere else")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise ConfigError(f"{option} {path} exists and is not a directory")
        _require_writable(path, path, option)
        _require_writable(path, resolved.parent, option)
        return path
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{option} {path} cannot be created: {ancestor} is not a directory")
    _require_writable(path, ancestor, option)
    return path


def _require_writable(out: Path, directory: Path, option: str) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {out} cannot be written: {directory} is not writable")
