"""Atomic writes: a checkpoint directory or a JSON file either appears whole or not at all.

Readers (a policy node hot-loading weights, a resumed trainer, a crashed run inspected later) must
never see half a checkpoint, so everything is written beside its final place and renamed into it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(directory: str | Path, drop: Collection[str] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory beside `directory`; on a clean exit it replaces `directory`.

    An exception inside the block removes the temporary directory and leaves any existing
    `directory` untouched. Replacing an existing directory moves it aside first (two renames), so
    at no time is a partly written directory visible under the final name. Entries of the replaced
    directory that the new one does not hold (a TensorBoard log written beside a checkpoint, a
    summary) are then moved into the new one, except the names in `drop` (files the writer owns and
    no longer writes, e.g. a full checkpoint's weights file replaced by an adapter's): replacing a
    checkpoint replaces its files, nothing else.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield tmp
        for path in tmp.iterdir():
            if path.is_file():
                os.chmod(path, 0o644)
        os.chmod(tmp, 0o755)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / directory.name)
            os.replace(tmp, directory)
            for entry in (old / directory.name).iterdir():
                if entry.name not in drop and not (directory / entry.name).exists():
                    os.replace(entry, directory / entry.name)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def jsonable(value):
    """JSON-safe copy: NaN / inf as null, numpy scalars and arrays as Python values, paths as strings."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency of every package using this
        np = None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if np is not None and isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if np is not None and isinstance(value, np.bool_):
        return bool(value)
    if np is not None and isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float) or (np is not None and isinstance(value, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json_atomic(path: str | Path, content) -> None:
    """JSON (NaN / inf as null) written to a temporary file beside `path` and renamed into place."""
    write_text_atomic(path, json.dumps(jsonable(content), indent=2))


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path` for the caller to write; on a clean exit it becomes `path`
    (mode 0644), on an exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """`text` written to a temporary file beside `path` and renamed into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
