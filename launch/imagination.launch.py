"""ros2 launch prophrl imagination.launch.py [name:=value ...] — nodes and parameters from config/profiles/imagination.yaml."""

from prophrl.launch_profile import generate_profile_launch_description

PROFILE = "imagination"


def generate_launch_description():
    return generate_profile_launch_description(PROFILE)
