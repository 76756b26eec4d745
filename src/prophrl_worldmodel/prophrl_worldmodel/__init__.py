"""Prophet action-conditioned video world model, rosbag2 datasets, adaptation, reward judge, imagination server."""
