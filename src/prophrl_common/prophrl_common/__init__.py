"""Shared ROS-side utilities: image conversion, action-chunk validation, robot configs, QoS."""
