"""`synbt --help` and every command's help: quick (no torch), and saying what the options do and default to."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from SynBTLib.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "monai", "SimpleITK", "matplotlib")


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_help_of_synbt_and_of_every_command_imports_no_heavy_module():
    runner = (
        "import json, sys\n"
        "from SynBTLib import cli\n"
        f"for argv in [['--help']] + [[name, '--help'] for name in {sorted(_commands())!r}]:\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "segment" in result.stdout and "train-seg" in result.stdout
    assert json.loads(result.stderr.strip().splitlines()[-1]) == []


def test_every_seed_and_steps_option_says_what_it_does_and_its_default():
    for name, parser in _commands().items():
        for action in parser._actions:
            if "--seed" in action.option_strings:
                assert action.help, f"{name} --seed has no help"
            if "--steps" in action.option_strings:
                assert action.help and "default" in action.help, f"{name} --steps does not say its default"


@pytest.mark.parametrize("command, module, writes", [
    ("train-autoencoder", "SynBTLib.training.autoencoder", "bundle/"),
    ("train-diffusion", "SynBTLib.training.diffusion", "bundle/"),
    ("train-seg", "SynBTLib.training.segmentation", "model/"),
])
def test_trainer_help_names_what_the_run_writes_and_the_built_in_steps(command, module, writes):
    import importlib

    parser = _commands()[command]
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    assert writes in helps["--out"] and ({"bundle/", "model/"} - {writes}).pop() not in helps["--out"]
    assert str(importlib.import_module(module).DEFAULT_CONFIG["training"]["steps"]) in helps["--steps"]


def test_train_seg_says_which_synthesizer_runs_on_the_fly():
    from SynBTLib.training.segmentation import DEFAULT_CONFIG

    parser = _commands()["train-seg"]
    method = next(a for a in parser._actions if "--method" in a.option_strings)
    assert f"default {DEFAULT_CONFIG['synthetic']['method']}" in method.help
    assert DEFAULT_CONFIG["synthetic"]["method"] in parser.description


@pytest.mark.parametrize("argv", [
    ["phantom"], ["phantom-cohort", "--n", "2"], ["demo"], ["evaluate", "--pred", "p", "--truth", "t"],
])
def test_a_full_output_folder_is_refused_first_naming_the_option(argv, tmp_path, capsys):
    from SynBTLib.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "overwrite=True" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
