"""Every entry point runs with the project's threading setup (prophrl_common.threads): OpenMP workers sleep
instead of spinning. libgomp prints the settings it really runs with when OMP_DISPLAY_ENV=VERBOSE; with
OMP_WAIT_POLICY=PASSIVE its spin count is 0 (unset, it spins 300000 times before it sleeps)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from prophrl.profiles import NodeSpec
from prophrl.up import node_command
from prophrl_common.paths import repo_root

BIN = Path(sys.executable).parent
# libgomp's display block: "  GOMP_SPINCOUNT = '0'"
SPINCOUNT = re.compile(r"GOMP_SPINCOUNT = '(\d+)'")


def _entry_points(tmp_path):
    """(what, argv): each loads torch and then exits on a missing input, without a ROS graph to wait for."""
    missing = str(tmp_path / "missing")
    return [
        ("node console script", [str(BIN / "policy_node"), "--ros-args", "-p", f"checkpoint_path:={missing}"]),
        ("prophrl CLI verb", [str(BIN / "prophrl"), "policy", "sft", "--dataset", missing, "--out", missing]),
        ("prophrl up node command", node_command(NodeSpec("policy_node", "prophrl_policy", "policy_node", None,
                                                          {"checkpoint_path": missing}, ()))),
        ("bench script", [sys.executable, str(repo_root() / "bench" / "policy_latency.py"), "--help"]),
    ]


def test_entry_points_run_openmp_workers_that_do_not_spin(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    running = [(what, subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       cwd=tmp_path))
               for what, argv in _entry_points(tmp_path)]
    wrong = []
    for what, proc in running:
        out, _ = proc.communicate(timeout=300)
        counts = SPINCOUNT.findall(out)
        if counts != ["0"]:
            wrong.append(f"{what}: OpenMP spin count {counts or 'never printed'} (exit {proc.returncode})\n"
                         f"{out[-1500:]}")
    assert not wrong, "expected spin count 0 (OMP_WAIT_POLICY=PASSIVE) in every entry point:\n" + "\n".join(wrong)
