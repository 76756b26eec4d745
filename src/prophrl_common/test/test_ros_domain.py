"""isolate_ros_domain: processes side by side on one machine never share a ROS domain."""

import os
import subprocess
import sys

HOLD = "from prophrl_common.testing import isolate_ros_domain as i; print(i(seed=5), flush=True); sys.stdin.read()"


def _fresh_env() -> dict:
    """The environment of a process started outside this (isolated) test process."""
    return {k: v for k, v in os.environ.items() if k not in ("ROS_DOMAIN_ID", "PROPHRL_ISOLATED_ROS_DOMAIN")}


def _start():
    return subprocess.Popen([sys.executable, "-c", f"import sys; {HOLD}"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_fresh_env())


def test_processes_asking_for_the_same_domain_get_different_ones_and_a_freed_one_is_reused():
    first = _start()
    try:
        domain_a = int(first.stdout.readline())
        second = _start()
        try:
            domain_b = int(second.stdout.readline())
        finally:
            second.communicate("")
    finally:
        first.communicate("")
    assert domain_a != domain_b
    assert 1 <= domain_a <= 232 and 1 <= domain_b <= 232
    third = _start()
    try:
        assert int(third.stdout.readline()) == domain_a  # the first process's lock went with it
    finally:
        third.communicate("")


def test_a_child_keeps_the_domain_its_parent_holds():
    code = ("import os, subprocess, sys; from prophrl_common.testing import isolate_ros_domain as i; d = i(seed=9); "
            "child = subprocess.run([sys.executable, '-c', 'from prophrl_common.testing import isolate_ros_domain as i;"
            " print(i(seed=9))'], capture_output=True, text=True, check=True); print(d, child.stdout.strip())")
    parent, child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                   env=_fresh_env()).stdout.split()
    assert parent == child


def test_a_child_that_does_not_inherit_takes_its_own_domain():
    """Regression: the suite's pytest-xdist workers kept the domain of the controller that started them, so two
    workers' nodes saw each other's topics (a collection recorded the other worker's episodes too)."""
    code = ("import os, subprocess, sys; from prophrl_common.testing import isolate_ros_domain as i; d = i(seed=9); "
            "child = subprocess.run([sys.executable, '-c', 'from prophrl_common.testing import isolate_ros_domain as i;"
            " print(i(seed=9, inherit=False))'], capture_output=True, text=True, check=True); "
            "print(d, child.stdout.strip())")
    parent, child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                   env=_fresh_env()).stdout.split()
    assert parent != child
