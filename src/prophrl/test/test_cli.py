import importlib

import pytest

from prophrl.cli import PASSTHROUGH_VERBS, main


@pytest.mark.parametrize("verb", sorted(PASSTHROUGH_VERBS))
def test_every_passthrough_verb_names_an_existing_main(verb):
    module_name, function_name = PASSTHROUGH_VERBS[verb][0].split(":")
    assert callable(getattr(importlib.import_module(module_name), function_name))


@pytest.mark.parametrize("verb", sorted(PASSTHROUGH_VERBS))
def test_passthrough_verbs_show_their_own_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_every_evaluation_command_runs_the_same_held_out_episodes_by_default():
    """`prophrl policy eval` once stopped episodes at 200 steps where `prophrl eval` stopped them at 150: the same
    policy got two different true success rates. Both now default to the one held-out protocol."""
    from prophrl.cli import build_parser
    from prophrl_trainer import report
    from prophrl_trainer.evaluation import EvalSettings

    policy_eval = build_parser().parse_args(["policy", "eval", "--checkpoint", "C"])
    eval_report = report.build_parser().parse_args(["--policy", "A=B", "--out", "O"])
    defaults = EvalSettings()
    assert policy_eval.max_steps == eval_report.max_steps == defaults.max_steps
    assert policy_eval.first_seed == eval_report.first_seed == defaults.first_seed
