"""Node parameters declared once (a frozen dataclass), validated in one place."""

import dataclasses

import pytest
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter

from prophrl_common.config_io import ConfigError
from prophrl_common.node_parameters import (check_parameter, declare_parameters, parameter, parameter_fields,
                                            read_parameters)


@dataclasses.dataclass(frozen=True)
class Example:
    topic: str = parameter("/in", "input topic", required=True)
    mode: str = parameter("ode", "sampler", choices=("ode", "sde"))
    period_s: float = parameter(0.1, "period", minimum=0.0, exclusive_minimum=True)
    steps: int = parameter(0, "steps", minimum=0, maximum=10)
    live: bool = parameter(False, "live")
    dirs: tuple[str, ...] = parameter((), "directories", required=True)
    gains: tuple[float, ...] = parameter((1.0, 2.0), "gains")


@pytest.fixture()
def make_node():
    rclpy.init()
    nodes = []

    def make(**overrides):
        node = Node(f"params_test_{len(nodes)}",
                    parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        nodes.append(node)
        declare_parameters(node, Example)
        return node
    yield make
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown()


def test_declared_defaults_descriptions_and_types_reach_ros(make_node):
    node = make_node(dirs=["data"], period_s=1)           # an int where a float is declared: accepted
    params = read_parameters(node, Example)
    assert params == Example(dirs=("data",), period_s=1.0)
    assert isinstance(params.period_s, float)
    assert node.describe_parameter("mode").description == "sampler (one of: ode, sde)"
    assert node.describe_parameter("steps").description == "steps (>= 0, <= 10)"
    assert [f.name for f in parameter_fields(Example)] == list(Example.__dataclass_fields__)


def test_every_bad_value_is_named_in_one_error(make_node):
    node = make_node(topic="", mode="euler", period_s=0.0, steps=11)
    with pytest.raises(ConfigError) as caught:
        read_parameters(node, Example)
    text = str(caught.value)
    for expected in ("parameter topic is required", "parameter mode must be one of ode, sde",
                     "parameter period_s must be a number > 0", "parameter steps must be an integer <= 10",
                     "parameter dirs is required"):
        assert expected in text, text


def test_a_run_time_change_that_breaks_a_rule_is_refused_with_the_reason(make_node):
    node = make_node(dirs=["data"])
    refused = node.set_parameters([Parameter("period_s", value=-1.0)])[0]
    assert not refused.successful and refused.reason == "parameter period_s must be a number > 0, got -1.0"
    assert node.set_parameters([Parameter("period_s", value=0.5)])[0].successful
    assert read_parameters(node, Example).period_s == 0.5


def test_run_time_changes_are_checked_by_the_same_rules():
    assert check_parameter(Example, "steps", -1) == "parameter steps must be an integer >= 0, got -1"
    assert check_parameter(Example, "steps", True) == "parameter steps must be an integer, got True"
    assert check_parameter(Example, "gains", [1.0, float("nan")]).startswith("parameter gains must be a list of")
    assert check_parameter(Example, "steps", 3) is None
    assert check_parameter(Example, "use_sim_time", True) is None   # not one of these parameters


def test_a_field_without_a_rule_or_with_an_unsupported_type_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Plain:
        x: int = 0

    @dataclasses.dataclass(frozen=True)
    class Nested:
        x: complex = parameter(0j, "x")

    for cls in (Plain, Nested):
        with pytest.raises(TypeError):
            parameter_fields(cls)
