"""Receding-horizon execution of action chunks, without ROS: the chunk in force and the next row to take.

A new chunk replaces the one in force (even unfinished: receding horizon), starting at a given row (the
row due now, prophrl_common.chunks.rows_due); each step takes one row, after skipping the rows whose time
passed while the caller was late (skip_to), so a row is never executed later than it was planned for. The executor node steps it on its
timer; the in-process sim rollout steps it once per control step. Every row taken goes through the safety
filter (prophrl_robot.safety) before it reaches an arm.
"""

from __future__ import annotations

import numpy as np


class ChunkStepper:
    def __init__(self):
        self.version = 0          # policy version of the last chunk put in force (kept when it is dropped)
        self.drop()

    def drop(self) -> None:
        """No chunk in force (e-stop, watchdog, deactivation)."""
        self.chunk: np.ndarray | None = None
        self.space = ""
        self.step_s = 0.0
        self.index = 0            # the next row
        self.rows_taken = 0       # rows of this chunk taken so far

    @property
    def active(self) -> bool:
        """A chunk is in force and has rows left."""
        return self.chunk is not None and self.index < len(self.chunk)

    def start(self, actions: np.ndarray, space: str, step_s: float, first_row: int = 0, version: int = 0) -> bool:
        """Put `actions` (steps, dim) in force from `first_row` on; returns whether an unfinished chunk was
        preempted."""
        if not 0 <= first_row < len(actions):
            raise ValueError(f"first_row {first_row} is outside a chunk of {len(actions)} rows")
        preempted = self.active
        self.chunk, self.space, self.step_s, self.version = actions, space, step_s, version
        self.index, self.rows_taken = first_row, 0
        return preempted

    def skip_to(self, row: int) -> int:
        """Make `row` the next row when it is ahead of the next one (never back); returns the rows skipped.
        A row past the chunk's end leaves no row in force."""
        if self.chunk is None or row <= self.index:
            return 0
        target = min(row, len(self.chunk))
        skipped, self.index = target - self.index, target
        return skipped

    def take(self) -> tuple[np.ndarray, bool]:
        """The next row, and whether it was the chunk's last."""
        if not self.active:
            raise RuntimeError("no chunk in force")
        row = self.chunk[self.index]
        self.index += 1
        self.rows_taken += 1
        return row, self.index >= len(self.chunk)
