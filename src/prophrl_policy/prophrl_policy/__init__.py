"""VLA policy with a flow-matching action head, policy node, action-chunk executor with safety filter, teleop, recorder."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)
