"""ProphRL bringup: launch files, configs, profiles and the prophrl CLI."""
