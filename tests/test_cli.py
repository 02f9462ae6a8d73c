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
