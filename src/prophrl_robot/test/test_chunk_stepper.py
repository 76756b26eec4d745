"""The receding-horizon chunk stepper shared by the executor node and the in-process sim rollout."""

import numpy as np
import pytest

from prophrl_robot.chunk_stepper import ChunkStepper


def test_rows_are_taken_in_order_from_the_first_row_due_and_a_new_chunk_preempts():
    stepper = ChunkStepper()
    assert not stepper.active
    first = np.arange(12, dtype=float).reshape(4, 3)
    assert stepper.start(first, "ee_delta_7d", 0.05, first_row=1, version=3) is False
    row, last = stepper.take()
    assert np.array_equal(row, first[1]) and not last and stepper.rows_taken == 1 and stepper.version == 3
    second = -first
    assert stepper.start(second, "ee_delta_7d", 0.05) is True, "an unfinished chunk was preempted"
    rows = [stepper.take() for _ in range(4)]
    assert [bool(last) for _, last in rows] == [False, False, False, True]
    assert np.array_equal(np.stack([r for r, _ in rows]), second)
    assert not stepper.active
    assert stepper.start(first, "ee_delta_7d", 0.05) is False, "a finished chunk is not preempted"
    stepper.drop()
    assert not stepper.active and stepper.chunk is None
    assert stepper.version == 0 and ChunkStepper().version == 0
    stepper.start(first, "ee_delta_7d", 0.05, version=5)
    stepper.drop()
    assert stepper.version == 5, "the version of the last chunk in force outlives its drop (diagnostics)"
    with pytest.raises(RuntimeError):
        stepper.take()
    with pytest.raises(ValueError):
        stepper.start(first, "ee_delta_7d", 0.05, first_row=4)


def test_skip_to_moves_only_forward_and_past_the_end_leaves_no_row():
    stepper = ChunkStepper()
    assert stepper.skip_to(3) == 0, "nothing to skip without a chunk"
    chunk = np.arange(10, dtype=float).reshape(5, 2)
    stepper.start(chunk, "ee_delta_7d", 0.05, first_row=1)
    assert stepper.skip_to(0) == 0 and stepper.skip_to(1) == 0, "never back, never the row already next"
    assert stepper.skip_to(3) == 2
    row, last = stepper.take()
    assert np.array_equal(row, chunk[3]) and not last
    assert stepper.skip_to(9) == 1 and not stepper.active, "only the rows the chunk has are counted"
