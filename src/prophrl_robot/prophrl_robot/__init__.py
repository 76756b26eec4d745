"""Robot runtime: action-chunk executor with safety filter and IK backends, ee pose, recorder, teleop, collector nodes."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)
