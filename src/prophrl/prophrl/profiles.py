"""Launch profiles (config/profiles/*.yaml): which nodes run, with which parameters and remappings.

One source for both `ros2 launch prophrl <profile>.launch.py` and `prophrl up <profile>`.

A profile:
    description: text
    arguments:                      # launch arguments, overridable as name:=value
      robot: {default: panda_sim, description: ...}
      checkpoint: {default: checkpoints/sft, description: ..., must_exist: true}   # a path that must exist
    nodes:
      - name: executor              # ROS node name
        package: prophrl_robot      # ament package == Python distribution
        executable: executor_node   # console script of that package
        params_file: nodes/executor_node.yaml   # relative to config/ (optional)
        parameters: {robot: "${robot}"}         # override the params file (optional)
        remappings: {/from: /to}                # (optional)
        required: true              # when it dies, the whole profile stops (default true)
        ends_profile: false         # the profile's job (a training run): its exit 0 ends the profile with 0
`${arg}` is replaced by the argument's value in parameter strings, remappings and params_file.
Unknown arguments are refused. Before a profile runs, check_paths() refuses `must_exist` arguments
whose path does not exist (relative to the current directory, where the nodes run).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from prophrl_common.config_io import ConfigError, load_yaml_mapping
from prophrl_common.paths import config_dir

_SUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ARGUMENT_KEYS = {"default", "description", "must_exist"}
_NODE_KEYS = {"name", "package", "executable", "params_file", "parameters", "remappings", "required",
              "ends_profile"}
_ROS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class ProfileArgument:
    name: str
    default: str
    description: str = ""
    must_exist: bool = False    # a path (file or directory) that must exist when the profile runs


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    name: str
    package: str
    executable: str
    params_file: Path | None
    parameters: Mapping[str, Any]
    remappings: tuple[tuple[str, str], ...]
    required: bool = True
    ends_profile: bool = False


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    description: str
    path: Path
    arguments: tuple[ProfileArgument, ...]
    nodes: tuple[NodeSpec, ...]
    values: Mapping[str, str] = dataclasses.field(default_factory=dict)   # argument name -> value


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "profiles").glob("*.yaml"))


def profile_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = config_dir() / "profiles" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile '{name_or_path}'; available: {available_profiles()}")
    return path


def profile_arguments(name_or_path: str | Path) -> tuple[ProfileArgument, ...]:
    path = profile_path(name_or_path)
    return _parse_arguments(load_yaml_mapping(path), str(path))


def _parse_arguments(data: dict, source: str) -> tuple[ProfileArgument, ...]:
    raw = data.get("arguments") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'arguments' must be a mapping of name -> {{default, description}}")
    args = []
    for name, spec in raw.items():
        if not isinstance(spec, dict) or "default" not in spec:
            raise ConfigError(f"{source}: argument '{name}' needs a 'default'")
        bad = sorted(set(spec) - _ARGUMENT_KEYS)
        if bad:
            raise ConfigError(f"{source}: argument '{name}': unknown key(s) {bad}; allowed: {sorted(_ARGUMENT_KEYS)}")
        if not isinstance(spec.get("must_exist", False), bool):
            raise ConfigError(f"{source}: argument '{name}': 'must_exist' must be true or false")
        args.append(ProfileArgument(str(name), str(spec["default"]), str(spec.get("description", "")),
                                    spec.get("must_exist", False)))
    return tuple(args)


def _substitute(value: Any, values: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        def repl(match: re.Match) -> str:
            key = match.group(1)
            if key not in values:
                raise ConfigError(f"{where}: '${{{key}}}' is not a declared argument ({sorted(values)})")
            return values[key]
        return _SUBST.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, values, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, values, where) for k, v in value.items()}
    return value


def _typed_substitute(value: Any, values: Mapping[str, str], where: str) -> Any:
    """A parameter written as "${seed}" takes the argument's YAML type (0 -> int), like ros2 launch."""
    if isinstance(value, str) and _SUBST.search(value):
        try:
            return yaml.safe_load(_substitute(value, values, where))
        except yaml.YAMLError:
            return _substitute(value, values, where)
    return _substitute(value, values, where)


def load_profile(name_or_path: str | Path, overrides: Mapping[str, str] | None = None) -> Profile:
    path = profile_path(name_or_path)
    source = str(path)
    data = load_yaml_mapping(path)
    unknown = sorted(set(data) - {"description", "arguments", "nodes"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}")
    arguments = _parse_arguments(data, source)
    values = {a.name: a.default for a in arguments}
    for key, value in (overrides or {}).items():
        if key not in values:
            raise ConfigError(f"profile '{path.stem}' has no argument '{key}'; arguments: {sorted(values)}")
        values[key] = str(value)

    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError(f"{source}: 'nodes' must be a non-empty list")
    nodes, seen = [], set()
    for i, raw in enumerate(raw_nodes):
        where = f"{source}: nodes[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a mapping")
        bad = sorted(set(raw) - _NODE_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {bad}; allowed: {sorted(_NODE_KEYS)}")
        for key in ("name", "package", "executable"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ConfigError(f"{where}: '{key}' is required")
        name = raw["name"]
        if not _ROS_NAME.match(name):
            raise ConfigError(f"{where}: '{name}' is not a valid ROS node name")
        if name in seen:
            raise ConfigError(f"{where}: duplicate node name '{name}'")
        seen.add(name)
        params_file = None
        if raw.get("params_file"):
            params_file = config_dir() / _substitute(raw["params_file"], values, where)
            if not params_file.is_file():
                raise ConfigError(f"{where}: params_file {params_file} does not exist")
        parameters = raw.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ConfigError(f"{where}: 'parameters' must be a mapping")
        parameters = {k: _typed_substitute(v, values, f"{where}: parameters.{k}") for k, v in parameters.items()}
        remappings = _substitute(raw.get("remappings") or {}, values, where)
        if not isinstance(remappings, dict):
            raise ConfigError(f"{where}: 'remappings' must be a mapping of from -> to")
        required = raw.get("required", True)
        ends_profile = raw.get("ends_profile", False)
        if not isinstance(required, bool) or not isinstance(ends_profile, bool):
            raise ConfigError(f"{where}: 'required' and 'ends_profile' must be true or false")
        if ends_profile and not required:
            raise ConfigError(f"{where}: a node with 'ends_profile: true' is required (its exit stops the profile)")
        nodes.append(NodeSpec(name, raw["package"], raw["executable"], params_file, parameters,
                              tuple((str(k), str(v)) for k, v in remappings.items()), required, ends_profile))
    return Profile(path.stem, str(data.get("description", "")), path, arguments, tuple(nodes), values)


def check_paths(profile: Profile) -> None:
    """Refuse to run a profile whose `must_exist` arguments name paths that do not exist (one line for all)."""
    missing = []
    for argument in profile.arguments:
        value = profile.values.get(argument.name, argument.default)
        path = Path(value).expanduser()
        if argument.must_exist and not path.exists():
            what = f" ({argument.description})" if argument.description else ""
            missing.append(f"{argument.name}:={value} does not exist (looked for {path.absolute()}); "
                           f"pass {argument.name}:=PATH{what}")
    if missing:
        raise ConfigError(f"profile '{profile.name}': " + "; ".join(missing))


def required_node_exit(spec: NodeSpec, returncode: int) -> tuple[int, str]:
    """A required node exited while the profile ran: the profile's exit status and the line that says so.
    The status is 0 when the node that ends the profile finished (exit 0), else the node's code (1 for
    another node that exited with 0). `prophrl up` and the launch files share it."""
    if spec.ends_profile and returncode == 0:
        return 0, f"{spec.name} finished; stopping the profile"
    return (returncode if returncode else 1,
            f"required node {spec.name} exited with code {returncode}; stopping the profile")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`robot:=ur5e task:=lift` (ros2 launch syntax) -> {'robot': 'ur5e', 'task': 'lift'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition(":=")
        if not sep or not key:
            raise ConfigError(f"bad argument '{item}': expected name:=value")
        out[key] = value
    return out
