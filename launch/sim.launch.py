"""ros2 launch prophrl sim.launch.py [name:=value ...] — nodes and parameters from config/profiles/sim.yaml."""

from prophrl.launch_profile import generate_profile_launch_description

PROFILE = "sim"


def generate_launch_description():
    return generate_profile_launch_description(PROFILE)
