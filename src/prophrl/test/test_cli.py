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
