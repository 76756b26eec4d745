"""ROS-free data layer: rosbag2 bags, bag -> episode alignment, training shards and their reader, LeRobot v3
export and import."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)
