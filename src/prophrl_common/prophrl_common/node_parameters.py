"""Node parameters declared once: a frozen dataclass per node, one field per ROS parameter.

Each field gives the parameter's default, description and rule (`parameter(...)`):

    @dataclasses.dataclass(frozen=True)
    class PolicyNodeParameters:
        replan_period_s: float = parameter(0.1, "a new chunk every replan_period_s; 0: on every camera frame",
                                           minimum=0.0)

`declare_parameters(node, cls)` declares them on a node (type, and the description with the rule, so
`ros2 param describe` shows them) and refuses a run-time change (`ros2 param set`) that breaks a rule, with
the reason; `read_parameters(node, cls)` reads and validates all of them into one instance (a ConfigError
naming every bad value, which a node reports as one line). The rules are checked here rather than by ROS
descriptor ranges, which would fail a bad command-line value inside the node's constructor with an exception. `config/nodes/<node>.yaml` holds only the values a deployment changes
(`yaml_overrides`): a default lives here and nowhere else.

The types: bool, int, float (an int given on the command line is accepted), str, and tuple[str, ...] /
tuple[float, ...] (ROS string / double arrays).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prophrl_common.config_io import ConfigError, load_yaml_mapping

_META = "prophrl_parameter"


@dataclasses.dataclass(frozen=True)
class ParameterRule:
    description: str
    minimum: float | None = None          # value >= minimum (> with exclusive_minimum)
    maximum: float | None = None          # value <= maximum
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    required: bool = False                # a str (or a list of them) that may not be empty


def parameter(default: Any, description: str, *, minimum: float | None = None, maximum: float | None = None,
              exclusive_minimum: bool = False, choices: Sequence[str] = (), required: bool = False) -> Any:
    """A dataclass field that is a ROS parameter (see the module docstring)."""
    rule = ParameterRule(description, minimum, maximum, exclusive_minimum, tuple(choices), required)
    return dataclasses.field(default=default, metadata={_META: rule})


@dataclasses.dataclass(frozen=True)
class ParameterField:
    name: str
    kind: type               # bool, int, float, str, or tuple (an array)
    item: type | None        # the item type of an array
    default: Any
    rule: ParameterRule


def parameter_fields(cls: type) -> tuple[ParameterField, ...]:
    """The parameters of a parameters dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if _META not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with parameter(...)")
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple:
            kind, item = tuple, typing.get_args(hint)[0]
        else:
            kind, item = hint, None
        if kind not in (bool, int, float, str, tuple) or item not in (None, str, float):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported parameter type {hint}")
        out.append(ParameterField(f.name, kind, item, f.default, f.metadata[_META]))
    return tuple(out)


def _problem(field: ParameterField, value: Any) -> tuple[Any, str | None]:
    """(value converted to the field's type, None) or (value, what is wrong with it)."""
    rule, kind = field.rule, field.kind
    if kind is bool:
        return value, None if isinstance(value, bool) else "must be true or false"
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return value, "must be an integer"
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return value, "must be a finite number"
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            return value, "must be a string"
        if rule.choices and value not in rule.choices:
            return value, f"must be one of {', '.join(rule.choices)}"
        if rule.required and not value:
            return value, "is required"
        return value, None
    else:
        if not isinstance(value, (list, tuple)):
            return value, "must be a list"
        if field.item is str and not all(isinstance(v, str) for v in value):
            return value, "must be a list of strings"
        if field.item is float:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                return value, "must be a list of finite numbers"
            value = [float(v) for v in value]
        value = tuple(value)
        if field.item is str and rule.required and not [v for v in value if v]:
            return value, "is required"
        return value, None
    what = "an integer" if kind is int else "a number"
    if rule.minimum is not None and (value <= rule.minimum if rule.exclusive_minimum else value < rule.minimum):
        return value, f"must be {what} {'>' if rule.exclusive_minimum else '>='} {rule.minimum:g}"
    if rule.maximum is not None and value > rule.maximum:
        return value, f"must be {what} <= {rule.maximum:g}"
    return value, None


def check_parameter(cls: type, name: str, value: Any) -> str | None:
    """Why `value` is no valid value of parameter `name` (None when it is; an unknown name is valid:
    the node did not declare it)."""
    for field in parameter_fields(cls):
        if field.name == name:
            _value, why = _problem(field, value)
            return None if why is None else f"parameter {name} {why}, got {value!r}"
    return None


def rule_text(rule: ParameterRule) -> str:
    """The rule in words, e.g. "> 0", "one of: ode, sde", "required"."""
    parts = []
    if rule.choices:
        parts.append(f"one of: {', '.join(rule.choices)}")
    if rule.minimum is not None:
        parts.append(f"{'>' if rule.exclusive_minimum else '>='} {rule.minimum:g}")
    if rule.maximum is not None:
        parts.append(f"<= {rule.maximum:g}")
    if rule.required:
        parts.append("required")
    return ", ".join(parts)


def declare_parameters(node, cls: type) -> None:
    """Declare every parameter of `cls` on `node` with its default, type and description, and check every
    run-time change of them against their rules."""
    from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
    from rclpy.parameter import Parameter

    array_types = {str: Parameter.Type.STRING_ARRAY, float: Parameter.Type.DOUBLE_ARRAY}
    for field in parameter_fields(cls):
        rule = rule_text(field.rule)
        descriptor = ParameterDescriptor(description=field.rule.description + (f" ({rule})" if rule else ""),
                                         dynamic_typing=field.kind is float)
        if field.kind is tuple and not field.default:
            node.declare_parameter(field.name, array_types[field.item], descriptor)
        else:
            default = list(field.default) if field.kind is tuple else field.default
            node.declare_parameter(field.name, default, descriptor)

    def check(changes) -> SetParametersResult:
        for changed in changes:
            why = check_parameter(cls, changed.name, changed.value)
            if why is not None:
                return SetParametersResult(successful=False, reason=why)
        return SetParametersResult(successful=True)
    node.add_on_set_parameters_callback(check)


def read_parameters(node, cls: type):
    """The node's current values as an instance of `cls` (ConfigError naming every bad value)."""
    from rclpy.exceptions import ParameterUninitializedException

    values, problems = {}, []
    for field in parameter_fields(cls):
        try:
            raw = node.get_parameter(field.name).value
        except ParameterUninitializedException:   # an array declared empty and never set
            raw = ()
        value, why = _problem(field, raw)
        if why is not None:
            problems.append(f"parameter {field.name} {why}, got {raw!r}")
        values[field.name] = value
    if problems:
        raise ConfigError("; ".join(problems))
    return cls(**values)


def yaml_overrides(path: str | Path) -> dict[str, Any]:
    """The `ros__parameters` of a node parameters file (`/**:` or `<node>:` at the top)."""
    data = load_yaml_mapping(path)
    out = {}
    for key, section in data.items():
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters", {}), dict):
            raise ConfigError(f"{path}: {key} must hold a ros__parameters mapping")
        out.update(section.get("ros__parameters") or {})
    return out
