"""ros2 launch prophrl sim_policy.launch.py [name:=value ...] — nodes and parameters from config/profiles/sim_policy.yaml."""

from prophrl.launch_profile import generate_profile_launch_description

PROFILE = "sim_policy"


def generate_launch_description():
    return generate_profile_launch_description(PROFILE)
