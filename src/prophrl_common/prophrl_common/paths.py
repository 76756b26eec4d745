"""Where the project's config/ and launch/ live, on a ROS install or in a source checkout."""

from __future__ import annotations

import os
from pathlib import Path


def _share_dir() -> Path | None:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory("prophrl"))
    except (PackageNotFoundError, ValueError, LookupError):
        return None


def repo_root() -> Path | None:
    """The source checkout this module was imported from (editable install), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "config" / "profiles").is_dir() and (parent / "src").is_dir():
            return parent
    return None


def _resolve(subdir: str, env_var: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    root = repo_root()  # a checkout wins over an older installed share dir
    if root is not None:
        return root / subdir
    share = _share_dir()
    if share is not None and (share / subdir).is_dir():
        return share / subdir
    raise FileNotFoundError(
        f"cannot find ProphRL's {subdir}/ directory: set {env_var}, install the 'prophrl' "
        "bringup package, or run from a source checkout"
    )


def config_dir() -> Path:
    return _resolve("config", "PROPHRL_CONFIG_DIR")


def launch_dir() -> Path:
    return _resolve("launch", "PROPHRL_LAUNCH_DIR")
