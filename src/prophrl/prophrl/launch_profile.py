"""Build a ROS 2 LaunchDescription from a profile (used by launch/*.launch.py on a ROS install)."""

from __future__ import annotations


def generate_profile_launch_description(profile_name: str):
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from prophrl.profiles import load_profile, profile_arguments

    arguments = profile_arguments(profile_name)

    def nodes(context):
        overrides = {a.name: LaunchConfiguration(a.name).perform(context) for a in arguments}
        profile = load_profile(profile_name, overrides)
        actions = []
        for spec in profile.nodes:
            parameters = ([str(spec.params_file)] if spec.params_file else []) + [dict(spec.parameters)]
            actions.append(Node(
                package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                parameters=parameters, remappings=list(spec.remappings),
                on_exit=Shutdown(reason=f"required node {spec.name} exited") if spec.required else None,
            ))
        return actions

    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description) for a in arguments]
        + [OpaqueFunction(function=nodes)]
    )
