"""How the test suite splits across pytest-xdist workers (`make test` runs it on two, `--dist loadgroup`).

The groups are the project's own, not `xdist_group` marks:
- tests that share an instance of one of the project's fixtures wider than a function (a module's collected
  dataset, the session's trained policy) form one group, which runs on one worker, so no such fixture is built
  twice; every other test is a group of its own;
- groups holding more tests marked `slow` come first, so that the many quick tests fill the end of the run on
  both workers instead of one worker finishing a long test alone (run with `--no-loadscope-reorder`, which
  keeps this order).
Only the workers collect tests: each writes the grouping of its collection to a file the controller named,
and the controller's scheduler (a LoadScopeScheduling whose scopes are these groups) reads it once every
worker has collected. (xdist's own loadgroup renames items by a private attribute that pytest 9 no longer
reads, so its marks group nothing.)

This module is a pytest plugin: the root conftest.py loads it (`pytest_plugins`).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

GROUPS_FILE_KEY = "prophrl_groups_file"   # in each worker's workerinput
_groups_file = pytest.StashKey[Path]()


def _shared_fixture_instances(item, project_root: Path) -> list[tuple[str, str, str]]:
    """(name, scope, where) of each instance of a project fixture wider than a function that `item` uses."""
    venv = Path(sys.prefix).resolve()
    keys = []
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        definition = definitions[-1]
        if definition.scope == "function":
            continue
        source = Path(inspect.getfile(definition.func)).resolve()
        if not source.is_relative_to(project_root) or source.is_relative_to(venv):   # plugins' (tmp_path_factory)
            continue
        where = {"session": "", "package": str(item.path.parent), "module": str(item.path),
                 "class": item.nodeid.rsplit("::", 1)[0]}[definition.scope]
        keys.append((name, definition.scope, where))
    return keys


def fixture_groups(items: list, project_root: Path) -> list[list]:
    """`items` (pytest's collected items) split into groups that share a fixture instance, in the order the
    groups should run."""
    project_root = project_root.resolve()
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    first_user: dict[tuple, int] = {}
    for i, item in enumerate(items):
        for key in _shared_fixture_instances(item, project_root):
            parent[root(i)] = root(first_user.setdefault(key, i))
    groups: dict[int, list] = {}
    for i, item in enumerate(items):
        groups.setdefault(root(i), []).append(item)
    return sorted(groups.values(), key=lambda group: -sum(1 for item in group if item.get_closest_marker("slow")))


@pytest.hookimpl(trylast=True)   # after the conftests' own changes to the items
def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """On a worker of a `--dist loadgroup` run: put `items` in group order and write the grouping to the
    controller's file. Elsewhere: nothing."""
    target = getattr(config, "workerinput", {}).get(GROUPS_FILE_KEY)
    if target is None:
        return
    groups = fixture_groups(items, config.rootpath)
    items[:] = [item for group in groups for item in group]
    grouping = {item.nodeid: f"group{number}" for number, group in enumerate(groups) for item in group}
    partial = Path(f"{target}.{os.getpid()}")
    partial.write_text(json.dumps(grouping))
    partial.replace(target)   # every worker writes the same grouping: any one complete file will do


def _controller_groups_file(config: pytest.Config) -> Path:
    if _groups_file not in config.stash:
        config.stash[_groups_file] = Path(tempfile.gettempdir()) / f"prophrl-xdist-groups-{os.getpid()}.json"
    return config.stash[_groups_file]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Tell a `--dist loadgroup` worker where to write the grouping."""
    if node.config.getvalue("dist") == "loadgroup":
        node.workerinput[GROUPS_FILE_KEY] = str(_controller_groups_file(node.config))


@pytest.hookimpl(optionalhook=True, tryfirst=True)   # before xdist's own
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """The fixture-group scheduler for `--dist loadgroup`, else xdist's own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return FixtureGroupScheduling(config, log, _controller_groups_file(config))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _groups_file in config.stash:
        config.stash[_groups_file].unlink(missing_ok=True)


class FixtureGroupScheduling(LoadScopeScheduling):
    """LoadScopeScheduling whose scopes are the groups the workers wrote (a test not in the file: its own)."""

    def __init__(self, config: pytest.Config, log, groups_file: Path) -> None:
        super().__init__(config, log)
        self._groups_file = groups_file
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:   # first called once every worker has collected (and so has written the file)
            self._groups = json.loads(self._groups_file.read_text()) if self._groups_file.is_file() else {}
        return self._groups.get(nodeid, nodeid)
