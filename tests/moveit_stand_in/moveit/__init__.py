"""A stand-in for moveit_py (MoveIt's Python bindings), which cannot be installed here: only the part of its
documented API that prophrl_robot.ik_backends.MoveItIkBackend calls, answered with the robot config's own
kinematics. The robot config is named by the PROPHRL_MOVEIT_STAND_IN_ROBOT environment variable.

moveit_py's API (moveit2/moveit_py, src/moveit/moveit_core/robot_state/robot_state.cpp and
moveit/planning.py): ``moveit.planning.MoveItPy(node_name=...)`` with ``get_robot_model()``;
``moveit.core.robot_state.RobotState(robot_model)`` with the ``joint_positions`` property (a dict of joint
name -> position), ``update(force=False, type="all")``, ``get_pose(link_name)`` -> geometry_msgs.msg.Pose
and ``set_from_ik(joint_model_group_name, geometry_pose, tip_name, timeout=0.0)`` -> bool.
"""
