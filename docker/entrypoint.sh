#!/usr/bin/env bash
set -e
source "/opt/ros/${ROS_DISTRO}/setup.bash"
source /ws/install/setup.bash
# Nodes started by ros2 run/launch use the system python: let them see the venv's packages (torch, ...).
export PYTHONPATH="$(/opt/prophrl-venv/bin/python -c 'import site; print(site.getsitepackages()[0])'):${PYTHONPATH}"
# The prophrl CLI is an ament_python executable (lib/prophrl/prophrl); put it on PATH too.
export PATH="/ws/install/prophrl/lib/prophrl:${PATH}"
exec "$@"
