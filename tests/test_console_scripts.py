"""Every node and verb a package declares is installed as a command that names an existing function.

Regression: after packages were reorganised, `make setup` on an existing checkout installed the moved node
commands with their new package and then deleted them while uninstalling the old one (`executor_node` was
gone, so `prophrl up` could not start the executor)."""

import ast
import importlib
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _console_scripts() -> list[tuple[str, str, str]]:
    """(package, command, "module:function") for every console_scripts entry of every package's setup.py."""
    entries = []
    for setup_py in sorted(SRC.glob("*/setup.py")):
        for node in ast.walk(ast.parse(setup_py.read_text())):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "console_scripts":
                        for item in ast.literal_eval(value):
                            name, target = (part.strip() for part in item.split("="))
                            entries.append((setup_py.parent.name, name, target))
    return entries


SCRIPTS = _console_scripts()


def test_the_packages_declare_the_runtime_nodes():
    names = {name for _, name, _ in SCRIPTS}
    assert {"executor_node", "recorder_node", "policy_node", "sim_node", "prophrl"} <= names, names


@pytest.mark.parametrize("package, name, target", SCRIPTS, ids=[name for _, name, _ in SCRIPTS])
def test_every_console_script_is_installed_and_resolves(package, name, target):
    command = Path(sys.executable).parent / name
    assert command.is_file(), f"{package} declares {name}, but {command} is missing: rerun `make setup`"
    module, function = target.split(":")
    assert callable(getattr(importlib.import_module(module), function)), target
