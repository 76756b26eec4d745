"""Per-stage latencies of a node's pipeline (ms, a rolling window each), for its log line and /diagnostics."""

from __future__ import annotations

from collections import deque

import numpy as np


class StageLatencies:
    """The last `window` latencies of each named stage, in milliseconds."""

    def __init__(self, stages: tuple[str, ...], window: int = 1000):
        if not stages or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct names, got {stages}")
        self.stages = tuple(stages)
        self._values = {stage: deque(maxlen=window) for stage in self.stages}

    def add(self, **latencies_ms: float) -> None:
        """One pass through the pipeline: a latency for some or all stages."""
        unknown = set(latencies_ms) - set(self.stages)
        if unknown:
            raise KeyError(f"unknown stages {sorted(unknown)}; known: {self.stages}")
        for stage, value in latencies_ms.items():
            self._values[stage].append(float(value))

    def count(self, stage: str) -> int:
        return len(self._values[stage])

    def percentiles(self) -> dict[str, tuple[float, float]]:
        """{stage: (p50, p95)} of the stages with at least one value."""
        return {stage: (float(np.percentile(values, 50)), float(np.percentile(values, 95)))
                for stage, values in self._values.items() if values}

    def summary(self) -> str:
        """One line: `stage p50/p95 ms` per stage with values."""
        return ", ".join(f"{stage} {p50:.1f}/{p95:.1f}" for stage, (p50, p95) in self.percentiles().items())

    def key_values(self) -> list[tuple[str, str]]:
        """(key, value) pairs for a DiagnosticStatus: `<stage>_p50_ms`, `<stage>_p95_ms` per stage with values."""
        pairs = []
        for stage, (p50, p95) in self.percentiles().items():
            pairs += [(f"{stage}_p50_ms", f"{p50:.3f}"), (f"{stage}_p95_ms", f"{p95:.3f}")]
        return pairs
