"""The error of a bag a user gives: raised by the bag writer and reader (prophrl_data.bag_writer, prophrl_data.bag_reader) and everything reading bags,
reported as a user's mistake by every verb (prophrl_common.cli_errors)."""

from __future__ import annotations

from pathlib import Path


class BagError(ValueError):
    """A bag that is missing, empty, damaged beyond recovery, or lacks what the caller needs."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"bag {path}: {problem}")
