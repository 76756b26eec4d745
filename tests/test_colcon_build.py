"""`colcon build` at the workspace root builds every package the way a real ROS 2 install does."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prophrl_common.paths import repo_root

ROOT = repo_root()


@pytest.mark.slow
@pytest.mark.timeout(600)   # 78-160 s on a 2-core machine, idle to loaded
def test_colcon_builds_all_packages_and_installs_launch_and_config(tmp_path):
    assert ROOT is not None, "run from a source checkout"
    workspace = tmp_path / "ws"
    for part in ("src", "launch", "config"):
        shutil.copytree(ROOT / part, workspace / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "install", "log"))
    venv = Path(sys.prefix)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    result = subprocess.run(
        [str(venv / "bin" / "colcon"), "build", "--base-paths", "src", "--event-handlers", "console_direct-",
         "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    install = workspace / "install"
    packages = {p.name for p in (ROOT / "src").iterdir() if (p / "package.xml").is_file()}
    assert packages <= {p.name for p in install.iterdir()}, "colcon skipped a package"
    share = install / "prophrl" / "share" / "prophrl"
    for launch_file in (ROOT / "launch").glob("*.launch.py"):
        assert (share / "launch" / launch_file.name).is_file()
    for config_file in (ROOT / "config").rglob("*.yaml"):
        assert (share / config_file.relative_to(ROOT)).is_file()
    # ament_python executables land in lib/<package>/ where `ros2 run` / launch_ros look for them
    assert (install / "prophrl" / "lib" / "prophrl" / "prophrl").is_file()
    assert (install / "prophrl_robot" / "lib" / "prophrl_robot" / "executor_node").is_file()
    assert (install / "prophrl_policy" / "lib" / "prophrl_policy" / "policy_node").is_file()
    generated = list((install / "prophrl_msgs").rglob("prophrl_msgs/msg/_action_chunk.py"))
    assert generated, "prophrl_msgs Python bindings were not generated"
    # `. install/setup.bash` sources each package's local_setup.bash
    assert (install / "prophrl_msgs" / "share" / "prophrl_msgs" / "local_setup.bash").is_file()


def test_setup_leaves_colcons_build_directory_to_colcon():
    """scripts/setup.sh (run before the suite) builds prophrl_msgs outside build/: `colcon build` at the repo
    root would otherwise reuse that CMake cache, install into the venv and leave install/prophrl_msgs empty."""
    assert ROOT is not None, "run from a source checkout"
    cache = ROOT / "build" / "prophrl_msgs" / "CMakeCache.txt"
    prefixes = [line.split("=", 1)[1] for line in (cache.read_text().splitlines() if cache.is_file() else [])
                if line.startswith("CMAKE_INSTALL_PREFIX:")]
    assert not any(Path(p).resolve() == Path(sys.prefix).resolve() for p in prefixes), \
        f"{cache} is setup.sh's build (it installs into {sys.prefix}), in colcon's build directory"
