"""Shared ROS-side utilities: image conversion, action-chunk validation, robot configs, QoS."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)
