"""ros2 launch prophrl real_robot.launch.py [name:=value ...] — nodes and parameters from config/profiles/real_robot.yaml."""

from prophrl.launch_profile import generate_profile_launch_description

PROFILE = "real_robot"


def generate_launch_description():
    return generate_profile_launch_description(PROFILE)
