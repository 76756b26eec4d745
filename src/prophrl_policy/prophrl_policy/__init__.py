"""VLA policy (vision + language + flow-matching action head) and its policy node."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)
