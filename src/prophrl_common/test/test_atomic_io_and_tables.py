import json
import math

import numpy as np
import pytest

from prophrl_common.atomic_io import atomic_directory, write_json_atomic
from prophrl_common.tables import format_table


def test_atomic_directory_replaces_an_existing_checkpoint_s_files(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "weights.txt").write_text("old")
    (target / "old.txt").write_text("old")
    with atomic_directory(target, drop=("old.txt",)) as tmp:
        assert not (target / "new.txt").exists()
        (tmp / "new.txt").write_text("new")
        (tmp / "weights.txt").write_text("new")
        assert (target / "weights.txt").read_text() == "old"  # still the old one while writing
    assert sorted(p.name for p in target.iterdir()) == ["new.txt", "weights.txt"]
    assert (target / "weights.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary or moved-aside directory left


def test_a_failed_save_leaves_the_old_checkpoint_and_no_litter(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "weights").write_text("good")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_json_is_written_with_null_for_non_finite_and_numpy_values_converted(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    write_json_atomic(path, {"a": math.nan, "b": np.float32(1.5), "c": np.arange(3), "d": np.bool_(True),
                             "e": [math.inf, 2], "f": tmp_path})
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5, "c": [0, 1, 2], "d": True, "e": [None, 2],
                                            "f": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_table_aligns_columns_and_marks_missing_values():
    text = format_table("title", ["name", "value"], [["long name", 0.123456], ["x", math.nan], ["y", None]])
    lines = text.splitlines()
    assert lines[0] == "title"
    assert lines[1].index("value") == lines[3].index("0.1235") == len("long name") + 2
    assert lines[4].split() == ["x", "-"] and lines[5].split() == ["y", "-"]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        format_table("bad", ["a", "b", "c"], [[1, 2]])
