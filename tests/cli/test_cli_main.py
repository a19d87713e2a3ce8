"""The `vcell` parser: every command in its place, only the command's module imported, `python -m engine.cli`."""

import argparse
import os
import subprocess
import sys
from importlib import import_module

import pytest
from vcell_testing import ROOT

from engine.cli import main
from engine.cli.main import COMMANDS

MODULES = sorted({module for module, _ in COMMANDS.values()})


def test_help_lists_every_command_and_imports_no_command_module():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "engine.cli", "--help"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ")]
    assert listed == list(COMMANDS)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "engine.cli.main" in imported
    assert not {"torch", "anndata", *(f"engine.cli.{module}" for module in MODULES)} & imported


@pytest.mark.parametrize("module", MODULES)
def test_each_module_registers_exactly_its_commands_with_a_handler(module):
    commands = import_module(f"engine.cli.{module}").COMMANDS
    assert set(commands) == {name for name, (home, _) in COMMANDS.items() if home == module}
    for name, add in commands.items():
        parser = argparse.ArgumentParser(prog=f"vcell {name}")
        add(parser)
        assert callable(parser.get_default("handler")), name


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: vcell {command} [-h]")


def test_unknown_or_missing_command_exits_2(capsys):
    for argv in (["nonsense"], []):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nonsense'" in err and "required: command" in err
    result = subprocess.run([sys.executable, "-m", "engine.cli", "nonsense"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "invalid choice" in result.stderr
