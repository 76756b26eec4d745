"""ros2 launch prophrl train.launch.py [name:=value ...] — nodes and parameters from config/profiles/train.yaml."""

from prophrl.launch_profile import generate_profile_launch_description

PROFILE = "train"


def generate_launch_description():
    return generate_profile_launch_description(PROFILE)
