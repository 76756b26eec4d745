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


def _tiny_policy(directory, robot="panda_sim"):
    import torch

    from prophrl_common.chunks import POLICY_STATE_NAMES
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_policy.embodiment import Embodiment
    from prophrl_policy.modeling_vla import VLAPolicy
    from prophrl_trainer.rl_smoke import smoke_norm_stats

    torch.manual_seed(0)
    config = get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32, horizon=4,
                            num_inference_steps=2)
    policy = VLAPolicy(config, smoke_norm_stats(), embodiment=Embodiment(robot, "ee_delta_7d", POLICY_STATE_NAMES, 0.05))
    with torch.no_grad():  # the output layer starts at zero; give the velocity something to say
        policy.action_out[1].weight.normal_(0, 0.3)
    return policy.save_pretrained(directory)


def _episode_actions(bags, tmp_path, name):
    from prophrl_data.conversion import bags2dataset
    from prophrl_data.shards import EpisodeDataset

    bags2dataset([bags], tmp_path / name, "panda_sim")
    return [(e.instruction, e.actions) for e in EpisodeDataset(tmp_path / name, "ee_delta_7d").episodes(("actions",))]


def test_a_policy_collects_its_own_episodes_labelled_by_the_sim(tmp_path, capsys):
    import numpy as np

    policy = _tiny_policy(tmp_path / "policy")
    argv = ["collect", "--direct", "--policy", str(policy), "--episodes", "2", "--max-steps", "8", "--image-size", "32",
            "--replan-steps", "4"]
    for name in ("a", "b"):
        assert prophrl_main(argv + ["--out", str(tmp_path / name)]) == 0
    for seed in (0, 1):
        custom = open_bag(tmp_path / "a" / bag_name(SETTINGS, seed)).custom_data
        assert custom["controller"] == "policy" and custom["policy"] == str(policy)
        assert custom["end_reason"] in ("SUCCESS", "FAILURE") and custom["success"] in ("true", "false")
    collect_direct(SETTINGS, tmp_path / "expert", show_progress=False)
    by_policy, again, by_expert = (_episode_actions(tmp_path / n, tmp_path, f"data_{n}") for n in ("a", "b", "expert"))
    assert len(by_policy) == 2
    for (text, acted), (_, repeated), (expert_text, expert) in zip(by_policy, again, by_expert):
        assert text == expert_text, "the same seeds: the same scenes and instructions"
        np.testing.assert_array_equal(acted, repeated)   # deterministic (ODE) sampling
        assert not np.allclose(acted[:4, :6], expert[:4, :6]), "the policy acted, not the expert"
    # the expert's collection never adopts the policy's bags, and the reverse
    with pytest.raises(ConfigError, match="is not an episode this collection recorded for seed 0"):
        collect_direct(SETTINGS, tmp_path / "a", show_progress=False)
    capsys.readouterr()
    assert prophrl_main(argv + ["--out", str(tmp_path / "expert")]) == 2
    # a policy trained for another robot is refused before anything is written
    assert prophrl_main(argv[:-2] + ["--robot", "ur5e_sim", "--out", str(tmp_path / "ur5e")]) == 2
    assert "trained for robot panda_sim" in capsys.readouterr().err and not (tmp_path / "ur5e").exists()
    assert prophrl_main(["collect", "--policy", str(policy), "--out", str(tmp_path / "live")]) == 2
    assert "pass --direct" in capsys.readouterr().err
