"""Per-robot configuration (config/robots/*.yaml): joints, limits, command interfaces, workspace, kinematics."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from prophrl_common.config_io import ConfigError, dataclass_from_mapping, load_yaml_mapping
from prophrl_common.kinematics import KinematicsConfig
from prophrl_common.paths import config_dir

DRIVERS = ("sim", "ros2_control")
COMMAND_INTERFACES = ("twist", "joint_trajectory")
# Who publishes the end-effector pose on ee_pose_topic: the simulator (or the imagination server),
# or ee_pose_node, by forward kinematics from /joint_states or from the driver's own pose topic.
EE_POSE_SOURCES = ("simulator", "forward_kinematics", "driver_pose")


@dataclasses.dataclass(frozen=True)
class RobotConfig:
    name: str
    description: str
    driver: str
    joint_names: tuple[str, ...]
    joint_position_lower: tuple[float, ...]
    joint_position_upper: tuple[float, ...]
    joint_velocity_limits: tuple[float, ...]
    home_position: tuple[float, ...]
    base_frame: str
    ee_frame: str
    command_interface: str
    joint_trajectory_topic: str
    twist_topic: str
    gripper_topic: str
    ee_pose_topic: str
    workspace_min: tuple[float, ...]
    workspace_max: tuple[float, ...]
    max_ee_translation_per_step_m: float
    max_ee_rotation_per_step_rad: float
    max_joint_step_rad: float
    control_period_s: float
    watchdog_timeout_s: float
    sim_model: str = ""
    ee_pose_source: str = "simulator"
    # The driver's geometry_msgs/PoseStamped of ee_frame (ee_pose_source driver_pose), in base_frame
    # or in kinematics.chain_base.
    driver_pose_topic: str = ""
    kinematics: KinematicsConfig | None = None

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def validate(self, source: str) -> "RobotConfig":
        n = self.num_joints
        if n == 0:
            raise ConfigError(f"{source}: joint_names is empty")
        for key in ("joint_position_lower", "joint_position_upper", "joint_velocity_limits", "home_position"):
            if len(getattr(self, key)) != n:
                raise ConfigError(f"{source}: {key} has {len(getattr(self, key))} values, expected {n} (one per joint)")
        for i, (lo, hi) in enumerate(zip(self.joint_position_lower, self.joint_position_upper)):
            if not lo < hi:
                raise ConfigError(f"{source}: joint {self.joint_names[i]} lower limit {lo} >= upper {hi}")
            if not lo <= self.home_position[i] <= hi:
                raise ConfigError(f"{source}: home position of {self.joint_names[i]} is outside its limits")
        if any(v <= 0 for v in self.joint_velocity_limits):
            raise ConfigError(f"{source}: joint_velocity_limits must be positive")
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ConfigError(f"{source}: workspace_min/max need 3 values (x, y, z)")
        if any(not lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ConfigError(f"{source}: workspace_min must be below workspace_max on every axis")
        for key in ("max_ee_translation_per_step_m", "max_ee_rotation_per_step_rad", "max_joint_step_rad",
                    "control_period_s", "watchdog_timeout_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{source}: {key} must be a positive number, got {value}")
        if self.driver not in DRIVERS:
            raise ConfigError(f"{source}: driver must be one of {DRIVERS}, got {self.driver!r}")
        if self.command_interface not in COMMAND_INTERFACES:
            raise ConfigError(f"{source}: command_interface must be one of {COMMAND_INTERFACES}, got {self.command_interface!r}")
        if self.driver == "sim" and not self.sim_model:
            raise ConfigError(f"{source}: a sim robot needs sim_model (the robosuite robot name)")
        if self.ee_pose_source not in EE_POSE_SOURCES:
            raise ConfigError(f"{source}: ee_pose_source must be one of {EE_POSE_SOURCES}, got {self.ee_pose_source!r}")
        if self.ee_pose_source == "forward_kinematics" and self.kinematics is None:
            raise ConfigError(f"{source}: ee_pose_source forward_kinematics needs a kinematics mapping")
        if self.ee_pose_source == "driver_pose" and not self.driver_pose_topic:
            raise ConfigError(f"{source}: ee_pose_source driver_pose needs driver_pose_topic")
        return self


def available_robots() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "robots").glob("*.yaml"))


def load_robot_config(name_or_path: str | Path) -> RobotConfig:
    """Load by registry name (config/robots/NAME.yaml) or by an explicit YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir() / "robots" / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown robot '{name_or_path}'; available: {available_robots()}")
    data = load_yaml_mapping(path)
    kinematics = data.pop("kinematics", None)
    robot = dataclass_from_mapping(RobotConfig, data, str(path))
    if kinematics is not None:
        if not isinstance(kinematics, dict):
            raise ConfigError(f"{path}: kinematics must be a mapping (convention, a, d, alpha, ...)")
        chain = dataclass_from_mapping(KinematicsConfig, kinematics, f"{path}: kinematics")
        robot = dataclasses.replace(robot, kinematics=chain.validate(str(path), robot.num_joints))
    return robot.validate(str(path))
