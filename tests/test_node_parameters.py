"""Every node's parameters come from one frozen dataclass; config/nodes/*.yaml holds overrides only."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from prophrl.node_parameters_index import NODE_PARAMETERS, parameters_class
from prophrl_common.node_parameters import check_parameter, parameter_fields, yaml_overrides
from prophrl_common.paths import config_dir

ROOT = Path(__file__).resolve().parents[1]
NODE_YAMLS = sorted((config_dir() / "nodes").glob("*.yaml"))


@pytest.mark.parametrize("path", NODE_YAMLS, ids=lambda p: p.stem)
def test_a_node_parameters_file_holds_only_valid_overrides_of_declared_parameters(path):
    """Regression: policy_node.py declared replan_period_s 0.4 while policy_node.yaml set 0.1."""
    fields = {f.name: f for f in parameter_fields(parameters_class(path.stem))}
    for name, value in yaml_overrides(path).items():
        assert name in fields, f"{path.name}: {name} is no parameter of {path.stem}"
        assert check_parameter(parameters_class(path.stem), name, value) is None
        default = list(fields[name].default) if isinstance(fields[name].default, tuple) else fields[name].default
        assert value != default, f"{path.name}: {name}: {value!r} repeats the default; delete it"


def test_the_index_names_every_node_console_script_and_each_parameters_dataclass():
    scripts = set()
    for setup in ROOT.glob("src/*/setup.py"):
        for node in ast.walk(ast.parse(setup.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "_node = " in node.value:
                scripts.add(node.value.split(" = ")[0])
    assert scripts and scripts == set(NODE_PARAMETERS), scripts ^ set(NODE_PARAMETERS)
    assert {p.stem for p in NODE_YAMLS} <= scripts
    for executable in NODE_PARAMETERS:
        assert parameter_fields(parameters_class(executable))


def test_parameters_are_declared_only_through_the_dataclasses():
    """One style: no node declares a parameter by hand."""
    offenders = []
    for path in ROOT.glob("src/*/*/*.py"):
        if path.name == "node_parameters.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("declare_parameter", "declare_parameters") \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_prophrl_params_lists_a_node_s_parameters_and_refuses_an_unknown_node():
    shown = subprocess.run([sys.executable, "-m", "prophrl.cli", "params", "policy_node"], capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "replan_period_s (float) = 0.1" in shown.stdout and "[one of: ode, sde]" in shown.stdout
    unknown = subprocess.run([sys.executable, "-m", "prophrl.cli", "params", "polcy_node"], capture_output=True,
                             text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown node 'polcy_node'" in unknown.stderr and "Traceback" not in unknown.stderr
