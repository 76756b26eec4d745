"""The suite's split across pytest-xdist workers: a shared fixture is built once, slow groups go first."""

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# The root conftest.py's plugin, and a record of each worker's order of the tests.
CONFTEST = """
import json, os
from pathlib import Path
import pytest

pytest_plugins = ["prophrl_common.parallel_suite"]

def pytest_collection_finish(session):
    Path(session.config.rootpath, "order_" + os.environ["PYTEST_XDIST_WORKER"] + ".json").write_text(
        json.dumps([item.nodeid for item in session.items]))

@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    with open(Path(__file__).with_name("builds.txt"), "a") as f:
        f.write("trained " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""

DATASET_MODULE = """
import os
from pathlib import Path
import pytest

@pytest.fixture(scope="module")
def dataset():
    with open(Path(__file__).with_name("builds.txt"), "a") as f:
        f.write("dataset " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")

@pytest.mark.parametrize("i", range(4))
def test_reads_the_dataset(dataset, i, tmp_path):
    pass

def test_alone():
    pass
"""

POLICY_MODULE = """
import pytest

def test_quick():
    pass

@pytest.mark.slow
def test_uses_the_policy(trained):
    pass
"""

OTHER_POLICY_MODULE = """
def test_also_uses_the_policy(trained):
    pass
"""


def test_shared_fixtures_are_built_once_and_slow_groups_run_first(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    for name, text in (("test_a_dataset.py", DATASET_MODULE), ("test_b_policy.py", POLICY_MODULE),
                       ("test_c_policy.py", OTHER_POLICY_MODULE)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}  # not this run's worker
    pytest_run = subprocess.Popen([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-n", "2", "--dist",
                                   "loadgroup", "--no-loadscope-reorder"], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env)
    output = pytest_run.communicate(timeout=240)[0]
    assert pytest_run.returncode == 0 and "8 passed" in output, output[-3000:]
    builds = (tmp_path / "builds.txt").read_text().split()
    # each fixture instance built once, whatever the split
    assert sorted(builds[0::2]) == ["dataset", "trained"], builds
    worker_of = dict(reversed(m.groups()) for m in re.finditer(r"\[(gw\d)\] .*PASSED (\S+)", output))
    assert len(worker_of) == 8, output
    assert len({worker_of[f"test_a_dataset.py::test_reads_the_dataset[{i}]"] for i in range(4)}) == 1
    assert (worker_of["test_b_policy.py::test_uses_the_policy"]
            == worker_of["test_c_policy.py::test_also_uses_the_policy"])
    order = json.loads((tmp_path / "order_gw0.json").read_text())
    assert order == json.loads((tmp_path / "order_gw1.json").read_text())   # xdist needs the same collection
    names = [nodeid.split("::")[1] for nodeid in order]
    # the group with the slow test first (its two users of the session fixture together), then the module
    # fixture's four users, then each test alone
    assert names[:2] == ["test_uses_the_policy", "test_also_uses_the_policy"], names
    assert names[2:6] == [f"test_reads_the_dataset[{i}]" for i in range(4)], names
    assert sorted(names[6:]) == ["test_alone", "test_quick"], names
    assert not list(Path(tempfile.gettempdir()).glob(f"prophrl-xdist-groups-{pytest_run.pid}*.json"))
