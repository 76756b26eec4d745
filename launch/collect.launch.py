"""ros2 launch prophrl collect.launch.py [name:=value ...] — nodes and parameters from config/profiles/collect.yaml."""

from prophrl.launch_profile import generate_profile_launch_description

PROFILE = "collect"


def generate_launch_description():
    return generate_profile_launch_description(PROFILE)
