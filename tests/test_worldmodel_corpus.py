"""scripts/collect_worldmodel_corpus.py: worker processes (--jobs) collect exactly the corpus one process does."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "collect_worldmodel_corpus.py"
SMALL = ["--episodes", "2", "--held-out-episodes", "1", "--robots", "panda_sim", "--tasks", "lift",
         "--views", "agentview", "sideview", "--held-out", "panda_sim/lift/sideview", "--max-steps", "12",
         "--image-size", "32", "--noisy-fraction", "0.5"]


def _collect(out: Path, jobs: int) -> dict:
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--jobs", str(jobs), *SMALL],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "corpus.json").read_text())


def _shards(dataset: Path) -> list[dict[str, np.ndarray]]:
    shards = []
    for path in sorted((dataset / "shards").glob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            shards.append({key: z[key] for key in ("frames", "actions", "ee_pose")})
    return shards


def test_two_jobs_collect_the_same_corpus_as_one(tmp_path):
    one = _collect(tmp_path / "one", jobs=1)
    two = _collect(tmp_path / "two", jobs=2)
    assert [r["combination"] for r in one["combinations"]] == [r["combination"] for r in two["combinations"]] == [
        "panda_sim_lift_agentview", "panda_sim_lift_sideview"]
    assert [r["split"] for r in two["combinations"]] == ["pretrain", "heldout"]
    for row_one, row_two in zip(one["combinations"], two["combinations"]):
        first, second = _shards(Path(row_one["dataset"])), _shards(Path(row_two["dataset"]))
        assert len(first) == len(second) == row_one["episodes"]
        for a, b in zip(first, second):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{row_one['combination']}: {key}")
    # the two views are different data, not one combination written twice
    assert not np.array_equal(_shards(Path(two["combinations"][0]["dataset"]))[0]["frames"],
                              _shards(Path(two["combinations"][1]["dataset"]))[0]["frames"])


def test_a_bad_job_count_is_one_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "c"), "--jobs", "0", *SMALL],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--jobs must be positive" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c").exists()
