"""`prophrl collect --direct` into a folder that already holds its bags continues instead of crashing."""

import pytest

from prophrl.cli import main as prophrl_main
from prophrl_data.bag_reader import open_bag
from prophrl_common.config_io import ConfigError
from prophrl_trainer.collect import CollectSettings, bag_name, collect_direct

SETTINGS = CollectSettings(episodes=2, max_steps=8, image_size=32)


def _bytes(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_rerun_keeps_finished_episodes_and_records_the_interrupted_one_again(tmp_path, capsys):
    """Regression: a rerun died with BagError "already exists" on the first bag."""
    out = tmp_path / "bags"
    first = collect_direct(SETTINGS, out, show_progress=False)
    kept = _bytes(out / bag_name(SETTINGS, 0))
    # seed 1 as a killed run leaves it: the MCAP cut mid-file, no metadata.yaml
    interrupted = out / bag_name(SETTINGS, 1)
    mcap = next(interrupted.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    (interrupted / "metadata.yaml").unlink(missing_ok=True)

    assert prophrl_main(["collect", "--direct", "--episodes", "3", "--max-steps", "8", "--image-size", "32",
                         "--out", str(out)]) == 0
    assert "collected 3 episodes" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [bag_name(SETTINGS, seed) for seed in range(3)]
    assert _bytes(out / bag_name(SETTINGS, 0)) == kept, "a finished episode is kept as it was"
    for seed in (1, 2):
        bag = open_bag(out / bag_name(SETTINGS, seed))
        assert not bag.recovered and bag.custom_data["end_reason"] in ("SUCCESS", "FAILURE")
        assert bag.custom_data["seed"] == str(seed)
    rows = collect_direct(CollectSettings(episodes=3, max_steps=8, image_size=32), out, show_progress=False)
    assert [r.get("resumed", False) for r in rows] == [True, True, True]
    assert rows[0]["success"] == first[0]["success"] and rows[0]["steps"] == first[0]["steps"]


def test_what_the_collection_did_not_write_is_never_touched(tmp_path, capsys):
    out = tmp_path / "bags"
    foreign = out / bag_name(SETTINGS, 1)
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not an episode this collection recorded for seed 1"):
        collect_direct(SETTINGS, out, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == [foreign.name], "refused before any episode ran"
    assert (foreign / "notes.txt").read_text() == "mine"
    assert prophrl_main(["collect", "--direct", "--episodes", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if ": error:" in line] == [
        f"prophrl collect: error: {foreign} exists and is not an episode this collection recorded for seed 1: "
        "move it away or choose another --out"]
