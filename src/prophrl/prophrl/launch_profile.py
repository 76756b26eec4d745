"""Build a ROS 2 LaunchDescription from a profile (used by launch/*.launch.py on a ROS install).

The launch files behave like `prophrl up`: an argument the profile does not declare (a misspelling
such as robt:=ur5e_sim) and a `must_exist` path that does not exist stop the launch before any node
starts, with one line saying what to pass; a required node that exits while the launch is not
shutting down stops the others and makes `ros2 launch` exit non-zero. Both are exceptions raised
inside launch's event loop, which logs "Caught exception in launch ...: <reason>", shuts everything
down and returns 1 (launch.LaunchService.run). Ctrl-C reaches the nodes and launch together, and on
a busy machine a node can be gone before launch has handled the signal: whether a required node's
exit fails the launch is decided EXIT_GRACE_S later. The node that ends the profile (`ends_profile`, a
training run) shuts the launch down with exit 0 when it finished. `launch` / `launch_ros` are imported only when
a launch description is built.
"""

from __future__ import annotations

from typing import Mapping

from prophrl.profiles import NodeSpec, Profile, check_paths, load_profile, profile_arguments, required_node_exit

# Launch configurations that launch and launch_ros read themselves (ros2 launch --launch-prefix, the
# sigterm/sigkill timeouts of every process, PushRosNamespace / SetParameter / SetRemap; AnonName keeps
# its names as "anon<name>"): never a misspelled profile argument.
FRAMEWORK_CONFIGURATIONS = frozenset({"launch-prefix", "launch-prefix-filter", "sigterm_timeout", "sigkill_timeout",
                                      "emulate_tty", "ros_namespace", "ros_remaps", "global_params"})
EXIT_GRACE_S = 2.0


class RequiredNodeExited(RuntimeError):
    """A required node of a launched profile exited."""


def profile_for_launch(profile_name: str, configurations: Mapping[str, object]) -> Profile:
    """The profile with the launch's configurations as arguments (ConfigError for an argument it does not
    declare, and for a `must_exist` path that does not exist)."""
    overrides = {name: str(value) for name, value in configurations.items()
                 if name not in FRAMEWORK_CONFIGURATIONS and not name.startswith("anon")}
    profile = load_profile(profile_name, overrides)
    check_paths(profile)
    return profile


def required_exit_reason(spec: NodeSpec, returncode: int, shutting_down: bool) -> str | None:
    """Why the launch must fail when required node `spec` exits with `returncode`; None while the launch
    is shutting down anyway (Ctrl-C, another node's failure) and when the node that ends the profile
    finished."""
    if shutting_down:
        return None
    status, message = required_node_exit(spec, returncode)
    return message if status else None


def generate_profile_launch_description(profile_name: str):
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown, TimerAction
    from launch_ros.actions import Node

    def on_required_exit(spec: NodeSpec):
        def handler(event, _context):
            if spec.ends_profile and event.returncode == 0:
                return Shutdown(reason=required_node_exit(spec, 0)[1])

            def fail_unless_shutting_down(context):
                reason = required_exit_reason(spec, event.returncode, context.is_shutdown)
                if reason is not None:
                    raise RequiredNodeExited(reason)
            return TimerAction(period=EXIT_GRACE_S, actions=[OpaqueFunction(function=fail_unless_shutting_down)])
        return handler

    def nodes(context):
        profile = profile_for_launch(profile_name, context.launch_configurations)
        actions = []
        for spec in profile.nodes:
            parameters = ([str(spec.params_file)] if spec.params_file else []) + [dict(spec.parameters)]
            actions.append(Node(
                package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                parameters=parameters, remappings=list(spec.remappings),
                on_exit=on_required_exit(spec) if spec.required else None,
            ))
        return actions

    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
         for a in profile_arguments(profile_name)]
        + [OpaqueFunction(function=nodes)]
    )
