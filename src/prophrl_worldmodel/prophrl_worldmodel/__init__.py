"""Prophet action-conditioned video world model, adaptation, reward judge, imagination server."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)
