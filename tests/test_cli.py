"""The ``distnet`` command's help: every command shows examples, and each example names an existing command."""

import pytest

from distnet.cli import COMMANDS, EXAMPLES, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_shows_examples(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out
    lines = EXAMPLES[name]
    assert lines and all(f"  {line}" in out for line in lines)
    for line in lines:  # the command after any launcher is this one
        words = line.split()
        assert words[words.index("distnet") + 1] == name


def test_the_top_level_help_shows_how_to_start(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "examples:" in capsys.readouterr().out


def test_a_mistyped_command_or_config_key_names_the_closest(capsys):
    assert main(["trian", "fashion-mlp"]) == 2
    assert capsys.readouterr().err.strip() == "distnet: error: distnet has no command 'trian': did you mean train?"
    assert main(["train", "fashion-mlp", "--set", "train.epoch=3", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown config key train.epoch (did you mean epochs?)" in err[0]
    assert main(["train", "fashion-mlp", "--set", "optimiser.lr=0.1", "--print-config"]) == 2
    assert "unknown config section [optimiser] (did you mean optimizer?)" in capsys.readouterr().err
