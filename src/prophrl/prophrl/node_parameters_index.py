"""Which parameters dataclass declares each node's parameters, by the node's console script.

`config/nodes/<executable>.yaml` holds a deployment's overrides of those defaults (tests/test_node_parameters.py
checks that every key there is a parameter of the node and differs from its default).
"""

from __future__ import annotations

import importlib

from prophrl_common.config_io import ConfigError

NODE_PARAMETERS = {
    "collector_node": "prophrl_robot.collector_node:CollectorNodeParameters",
    "ee_pose_node": "prophrl_robot.ee_pose_node:EePoseNodeParameters",
    "executor_node": "prophrl_robot.executor_node:ExecutorNodeParameters",
    "imagination_node": "prophrl_worldmodel.imagination_node:ImaginationNodeParameters",
    "interface_test_node": "prophrl_common.testing_nodes:InterfaceTestNodeParameters",
    "judge_node": "prophrl_worldmodel.judge_node:JudgeNodeParameters",
    "policy_node": "prophrl_policy.policy_node:PolicyNodeParameters",
    "recorder_node": "prophrl_robot.recorder_node:RecorderNodeParameters",
    "scripted_expert_node": "prophrl_sim.scripted_expert_node:ScriptedExpertNodeParameters",
    "sim_node": "prophrl_sim.sim_node:SimNodeParameters",
    "teleop_node": "prophrl_robot.teleop_node:TeleopNodeParameters",
    "trainer_node": "prophrl_trainer.trainer_node:TrainerNodeParameters",
}


def parameters_class(executable: str) -> type:
    """The parameters dataclass of the node started by console script `executable`."""
    if executable not in NODE_PARAMETERS:
        raise ConfigError(f"unknown node '{executable}'; nodes: {', '.join(sorted(NODE_PARAMETERS))}")
    module, name = NODE_PARAMETERS[executable].split(":")
    return getattr(importlib.import_module(module), name)


def describe_parameters(executable: str) -> str:
    """Every parameter of the node: type, default, the value config/nodes/<executable>.yaml sets, rule and
    description, one block each."""
    from prophrl_common.node_parameters import parameter_fields, rule_text, yaml_overrides
    from prophrl_common.paths import config_dir

    cls = parameters_class(executable)
    path = config_dir() / "nodes" / f"{executable}.yaml"
    overrides = yaml_overrides(path) if path.is_file() else {}
    lines = [f"{executable}: {cls.__name__} ({cls.__module__}); overrides: {path if path.is_file() else 'none'}"]
    for field in parameter_fields(cls):
        kind = f"list of {field.item.__name__}" if field.kind is tuple else field.kind.__name__
        default = list(field.default) if field.kind is tuple else field.default
        here = f"   (set to {overrides[field.name]!r} in {path.name})" if field.name in overrides else ""
        rule = rule_text(field.rule)
        lines.append(f"  {field.name} ({kind}) = {default!r}{here}")
        lines.append(f"      {field.rule.description}{f' [{rule}]' if rule else ''}")
    return "\n".join(lines)
