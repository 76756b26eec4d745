"""VLA policy with a flow-matching action head, policy node, action-chunk executor with safety filter, teleop, recorder."""
