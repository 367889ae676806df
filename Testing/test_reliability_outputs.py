"""Issue 29 point 3: one writer per output folder, results moved into place as a whole, and a killed
`synbt synthesize` leaves either the old result or the new one, never a mix, and nothing behind."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SynBTLib import SynBTError
from SynBTLib.cli import main
from SynBTLib.io import write_image, write_label
from SynBTLib.synthesis_outputs import OutputFolder
from test_export import reference, source  # noqa: F401  (fixtures: a small source and its export)
from test_handcrafted import make_case, sphere_mask

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inputs(tmp_path):
    case = make_case()
    phases = [str(write_image(p, case.geometry, tmp_path / "in" / f"p{k}.nii.gz")) for k, p in enumerate(case.phases)]
    mask = str(write_label(sphere_mask(), case.geometry, tmp_path / "in" / "mask.nii.gz"))
    return phases, mask


def synthesize_args(inputs, out, seed, *extra):
    phases, mask = inputs
    return ["synthesize", "--phases", *phases, "--mask", mask, "--method", "handcrafted", "--seed", str(seed),
            "--out", str(out), *extra]


def result_of(out: Path) -> dict:
    """What a result is: its file names, its voxels, and its provenance without the time stamp."""
    names = sorted(p.name for p in out.iterdir())
    arrays = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(out.glob("*.nii.gz"))}
    provenance = json.loads((out / "provenance.json").read_text())
    provenance.pop("created")
    return {"names": names, "arrays": arrays, "provenance": provenance}


def assert_same_result(a: dict, b: dict):
    assert a["names"] == b["names"] and a["provenance"] == b["provenance"]
    for name, array in a["arrays"].items():
        np.testing.assert_array_equal(array, b["arrays"][name])


def leftovers(folder: Path) -> list[str]:
    """SynBT's temp files, staging and moved-aside folders and lock files anywhere under folder."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.startswith("."))


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from SynBTLib.synthesis_outputs import OutputFolder; "
         f"f = OutputFolder({str(out)!r}); print('locked', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(synthesize_args(inputs, out, 1)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another synbt run is writing" in err[0] and str(out) in err[0]
        assert not out.exists()
        with pytest.raises(SynBTError, match="another synbt run"):
            OutputFolder(out)
    finally:
        holder.kill()  # a writer that dies holding the lock does not block the next one
        holder.wait()
    assert main(synthesize_args(inputs, out, 1)) == 0
    assert leftovers(tmp_path) == []


def test_output_folder_commits_as_a_whole_and_keeps_the_users_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "phase_5.nii.gz").write_text("old result")
    (out / ".tmp-0123abcd-phase_0.nii.gz").write_text("temp of a killed run")
    (out / ".hidden-user-file").write_text("also mine")
    with pytest.raises(SynBTError, match="--overwrite"):
        OutputFolder(out)
    folder = OutputFolder(out, overwrite=True)
    folder.staging.mkdir()
    (folder.staging / "phase_0.nii.gz").write_text("new")
    assert (out / "phase_5.nii.gz").exists()  # nothing visible until the commit
    assert folder.commit() == out.resolve()
    assert sorted(p.name for p in out.iterdir()) == [".hidden-user-file", "notes.txt", "phase_0.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_writer_that_gives_up_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out) as folder:
        folder.staging.mkdir()
        (folder.staging / "phase_0.nii.gz").write_text("half")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_what_a_killed_writer_left_is_repaired_by_the_next(tmp_path):
    out = tmp_path / "out"
    # killed after moving the old result aside, before renaming the staging folder into place
    aside, staging = tmp_path / ".out.synbt-replaced-0badf00d", tmp_path / ".out.synbt-staging-0badf00d"
    aside.mkdir()
    (aside / "phase_0.nii.gz").write_text("old result")
    staging.mkdir()
    (staging / "phase_0.nii.gz").write_text("half of a new result")
    (tmp_path / ".out.synbt-lock").touch()
    with OutputFolder(out, overwrite=True):
        assert (out / "phase_0.nii.gz").read_text() == "old result"
        assert not aside.exists() and not staging.exists()
    # killed after the swap, before the old folder was emptied: the user's file comes back
    aside.mkdir()
    (aside / "notes.txt").write_text("mine")
    (aside / "preview.png").write_text("old preview")
    with OutputFolder(out, overwrite=True):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "phase_0.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("kill_seed", [3, 11])
def test_killed_synthesize_leaves_the_old_or_the_new_result_never_a_mix(inputs, tmp_path, kill_seed):
    """SIGKILL a real `synbt synthesize --overwrite` at a random moment (fixed seed) once it starts writing."""
    reference = tmp_path / "reference"
    assert main(synthesize_args(inputs, reference, 2)) == 0
    new = result_of(reference)
    out = tmp_path / "out"
    assert main(synthesize_args(inputs, out, 1)) == 0
    old = result_of(out)

    delay = np.random.default_rng(kill_seed).uniform(0.0, 0.3)
    process = subprocess.Popen([sys.executable, "-m", "SynBTLib", *synthesize_args(inputs, out, 2, "--overwrite")],
                               env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and not list(tmp_path.glob(".out.synbt-staging-*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    after_kill = result_of(out)
    assert after_kill["provenance"]["seed"] in (1, 2)
    assert_same_result(after_kill, old if after_kill["provenance"]["seed"] == 1 else new)
    assert [p for p in leftovers(out)] == []

    assert main(synthesize_args(inputs, out, 2, "--overwrite")) == 0
    rerun = result_of(out)
    for result in (rerun, new):  # input paths are the same; only the output folder differs
        result["provenance"].pop("outputs")
    assert_same_result(rerun, new)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kill_seed", [5])
def test_export_killed_at_a_random_moment_resumes_to_the_uninterrupted_result(kill_seed, source, reference, tmp_path):  # noqa: F811
    """SIGKILL a real `synbt export` at a random moment (fixed seed) after it starts; the rerun completes it
    exactly as an uninterrupted export (test_export's reference), with no temp folder left."""
    from test_export import assert_same_cases, visible_files

    out = tmp_path / "killed"
    args = ["export", "--source", str(source), "--out", str(out), "--num-cases", "3", "--format", "nnunet",
            "--method", "handcrafted", "--tumors-per-case", "1", "--size-mm", "10", "16", "--seed", "7"]
    process = subprocess.Popen([sys.executable, "-m", "SynBTLib", *args], env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and not (out / "export.json").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(np.random.default_rng(kill_seed).uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert main(args) == 0
    assert not list(out.glob(".tmp-*"))
    assert visible_files(out) == visible_files(reference)
    assert_same_cases(out, reference, ["SynBT_000", "SynBT_001", "SynBT_002"])
