"""moveit.planning stand-in: MoveItPy (see the package docstring)."""

import os

from prophrl_common.kinematics import KinematicChain
from prophrl_common.robots import load_robot_config


class RobotModel:
    def __init__(self, robot):
        self.robot = robot
        self.chain = KinematicChain.for_robot(robot)
        self.calls = {"set_from_ik": 0, "get_pose": 0}


class MoveItPy:
    def __init__(self, node_name: str = "moveit_py", **_kwargs):
        self.node_name = node_name
        self._model = RobotModel(load_robot_config(os.environ["PROPHRL_MOVEIT_STAND_IN_ROBOT"]))

    def get_robot_model(self) -> RobotModel:
        return self._model
