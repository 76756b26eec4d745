"""ProphRL bringup: launch files, configs, profiles and the prophrl CLI."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)
