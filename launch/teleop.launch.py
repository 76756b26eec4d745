"""ros2 launch prophrl teleop.launch.py [name:=value ...] — nodes and parameters from config/profiles/teleop.yaml."""

from prophrl.launch_profile import generate_profile_launch_description

PROFILE = "teleop"


def generate_launch_description():
    return generate_profile_launch_description(PROFILE)
