"""Every test session runs its nodes on a private ROS domain, loopback only."""

from prophrl_common.testing import isolate_ros_domain

isolate_ros_domain()
