"""The timing of a chunk's rows: exact integer arithmetic on ns, shared by the executor and recordings."""

from fractions import Fraction

import numpy as np

from prophrl_common.chunks import chunk_period_ns, chunk_steps_due, rows_due


def test_the_float32_period_of_a_message_is_the_robot_configs_decimal():
    # float32(0.05) is 50,000,000.745 ns: a float quotient makes one period after the stamp row 0.
    assert chunk_period_ns(np.float32(0.05), 0.05) == Fraction(50_000_000)
    assert rows_due(50_000_000, chunk_period_ns(np.float32(0.05), 0.05)).tolist() == [1]
    assert int(50_000_000 / (float(np.float32(0.05)) * 1e9)) == 0  # what float arithmetic gives
    # A chunk at another period than the robot's keeps its own shortest decimal.
    assert chunk_period_ns(np.float32(0.1), 0.05) == Fraction(100_000_000)


def test_rows_due_and_steps_due_at_the_boundaries():
    period = Fraction(50_000_000)
    elapsed = [0, 49_999_999, 50_000_000, 125_000_000, 10**9]
    assert rows_due(elapsed, period).tolist() == [0, 0, 1, 2, 20]
    assert chunk_steps_due(np.array(elapsed), period, horizon=10).tolist() == [0, 0, 1, 2, 9]  # clipped to the last
