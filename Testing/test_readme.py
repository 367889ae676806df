"""README's command-line examples cannot drift: every `<!-- readme-test -->` block parses as written, and
(marked slow) runs top to bottom in an empty folder at small sizes."""
import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from SynBTLib.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- readme-test -->"


def readme_commands() -> list[list[str]]:
    """The commands of the marked bash blocks, in order, as argument lists (comments and `\\` joins resolved)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(re.escape(MARKER) + r"\s*```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def test_readme_is_a_short_guide_and_its_examples_parse_as_written():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    commands = readme_commands()
    assert len(commands) >= 10 and all(words[0] == "synbt" for words in commands)
    parser = build_parser()
    for words in commands:
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"README command does not parse: {' '.join(words)}")
        for word in words:  # files of the repository it names (configs/...) exist
            if word.startswith("configs/"):
                assert (ROOT / word).is_file(), word
    outs = [words[words.index("--out") + 1] for words in commands if "--out" in words]
    assert len(outs) == len(set(outs)), "two README examples write the same --out folder"
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+)\)", readme):  # local links resolve
        assert (ROOT / link).exists(), link
    commands_named = {words[1] for words in commands}
    assert {"synthesize", "segment", "evaluate", "train-seg", "export"} <= commands_named


def _short_form(words: list[str], tmp: Path) -> list[str]:
    """The same command at sizes a test can run: later options override the README's (argparse keeps the last)."""
    args = words[1:]
    name, extra = args[0], []
    if name in ("phantom", "phantom-cohort"):
        extra = ["--shape", "96", "96", "32"] + (["--n", "2", "--workers", "1"] if name == "phantom-cohort" else [])
    elif name == "synthesize":
        extra = (["--size-mm", "14"] if "--auto" in args else []) + ([] if "handcrafted" in args else ["--steps", "2"])
    elif name == "export":
        extra = ["--num-cases", "2", "--size-mm", "10", "14", "--steps", "2"]
    elif name == "train-seg":
        tiny = {"model": {"channels": [8, 16, 32], "num_res_units": 1}, "data": {"patch_size": [8, 32, 32]},
                "training": {"batch_size": 2, "warmup_steps": 1}, "validation": {"sw_batch_size": 4}}
        (tmp / "tiny_seg.json").write_text(json.dumps(tiny))
        extra = ["--config", str(tmp / "tiny_seg.json"), "--steps", "2"]
    elif name in ("train-autoencoder", "train-diffusion"):
        config = json.loads((ROOT / args[args.index("--config") + 1]).read_text())
        for key in ("pca_patches", "latent_scale_patches"):
            if key in config:
                config[key] = 4
        (tmp / f"short_{name}.json").write_text(json.dumps(config))
        extra = ["--config", str(tmp / f"short_{name}.json"), "--steps", "2", "--batch-size", "1"]
    elif name == "calibrate":
        extra = ["--max-tumors", "2", "--steps", "2"]
    return args + extra


@pytest.mark.slow
def test_readme_examples_run_top_to_bottom_in_an_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for words in readme_commands():
        code = main(_short_form(words, tmp_path))
        assert code == 0, f"{' '.join(words)}: {capsys.readouterr().err[-2000:]}"
    assert (tmp_path / "report" / "metrics.csv").is_file() and (tmp_path / "mine" / "tumor_labels.nii.gz").is_file()


def test_short_forms_only_add_options_the_commands_have():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for words in readme_commands():
        name = words[1]
        if name in ("train-autoencoder", "train-diffusion"):
            continue  # their short form writes a config file
        added = _short_form(words, Path("/nonexistent"))[len(words) - 1:] if name != "train-seg" else []
        known = {s for a in sub.choices[name]._actions for s in a.option_strings}
        assert all(w in known for w in added if w.startswith("--")), (name, added)
