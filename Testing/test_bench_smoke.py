"""The benchmark scripts run end to end with --quick and write their CSV table and PNG plot.

Each script spawns its own measurement processes (one thread each); the figures themselves are not
checked, only that every measurement ran and produced sane values.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# minutes of end-to-end runs of the benchmark scripts: not in `make test`, run by CI (pytest -m slow)
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent / "bench"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRIPTS = {
    "bench_synthesis.py": "synthesis",
    "bench_loader.py": "loader",
    "profile_synthesis.py": "profile",
}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Run every script with --quick; {script: (completed process, output folder)}."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results = {}
    for script in SCRIPTS:
        out = tmp_path_factory.mktemp(script.split(".")[0])
        command = [sys.executable, str(BENCH / script), "--quick", "--threads", "1", "--out", str(out)]
        results[script] = (subprocess.run(command, capture_output=True, text=True, env=env, timeout=240), out)
    return results


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_quick_run_writes_csv_and_png(quick_runs, script):
    completed, out = quick_runs[script]
    assert completed.returncode == 0, completed.stderr[-2000:]
    name = SCRIPTS[script]
    assert (out / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)
    rows = read_rows(out / f"{name}.csv")
    assert rows, f"{name}.csv has no rows"
    assert f"wrote {out / name}.csv" in completed.stdout


def test_synthesis_measures_both_paths(quick_runs):
    _, out = quick_runs["bench_synthesis.py"]
    rows = {row["path"]: row for row in read_rows(out / "synthesis.csv")}
    assert set(rows) == {"roi", "full"}
    for row in rows.values():
        assert row["status"].startswith("measured"), row["status"]
        assert float(row["total_s"]) > 0 and 0.05 < float(row["peak_rss_gb"]) < 8
    # The ROI box is a multiple of the networks' size multiple (compression x denoiser downsampling);
    # the full path covers the volume (tiny: 48x48x24) padded up to that multiple.
    multiple = int(rows["roi"]["roi_multiple"])
    assert multiple >= 4 and [int(n) % multiple for n in rows["roi"]["region"].split("x")] == [0, 0, 0]
    assert [int(n) for n in rows["full"]["region"].split("x")] == [-(-n // multiple) * multiple for n in (48, 48, 24)]
    assert float(rows["roi"]["speedup"]) > 0


def test_loader_measures_both_synthesizers(quick_runs):
    _, out = quick_runs["bench_loader.py"]
    rows = {row["synthesizer"]: row for row in read_rows(out / "loader.csv")}
    assert set(rows) == {"handcrafted", "diffusion"}
    for row in rows.values():
        assert row["status"] == "measured", row["status"]
        assert float(row["cases_per_min"]) == pytest.approx(60.0 / float(row["case_s"]), rel=1e-3)


def test_profile_lists_the_pipeline_call(quick_runs):
    _, out = quick_runs["profile_synthesis.py"]
    rows = read_rows(out / "profile.csv")
    overall = [row for row in rows if row["table"] == "all"]
    own = [row for row in rows if row["table"] == "SynBTLib"]
    assert len(overall) == 15 and 0 < len(own) <= 15
    assert all("SynBTLib/" in row["function"] for row in own)
    assert any("SynBTLib/pipeline.py" in row["function"] and "__call__" in row["function"] for row in overall)
    for table in (overall, own):
        cumulative = [float(row["cumtime_s"]) for row in table]
        assert cumulative == sorted(cumulative, reverse=True)


def test_latent_bound_rises_with_channels_and_refuses_mixed_phase_counts(tmp_path):
    """bench/latent_bound.py on two tiny phantom cohorts: more channels keep more, PSNR rises."""
    from SynBTLib.phantom import make_phantom, write_phantom

    for name, seed, phases in (("train/a", 1, 3), ("train/b", 2, 3), ("test/c", 3, 3), ("other/d", 4, 2)):
        write_phantom(make_phantom(seed=seed, shape=(48, 48, 16), phases=phases, density="c"), tmp_path / name)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, str(BENCH / "latent_bound.py"), "--train", str(tmp_path / "train"),
               "--channels", "2", "8", "32", "--out", str(tmp_path / "out")]
    done = subprocess.run(command + ["--test", str(tmp_path / "test")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path / "out" / "latent_bound.csv")
    psnr = [float(row["psnr_breast_db"]) for row in rows]
    kept = [float(row["variance_kept"]) for row in rows]
    assert [row["channels"] for row in rows] == ["2", "8", "32"]
    assert psnr[0] < psnr[1] < psnr[2] and kept[0] < kept[1] < kept[2] <= 1.0
    mixed = subprocess.run(command + ["--test", str(tmp_path / "other")], capture_output=True, text=True, env=env, timeout=120)
    assert mixed.returncode == 2 and "phases" in mixed.stderr


def test_kinetic_control_reports_what_a_kinetic_bundle_made(tmp_path):
    from test_cli_synthesize import kinetic_bundle

    bundle = kinetic_bundle(tmp_path / "bundle", {"persistent": 1, "plateau": 1, "washout": 1})
    command = [sys.executable, str(BENCH / "kinetic_control.py"), "--bundle", str(bundle), "--n", "1", "--shape",
               "48", "48", "24", "--steps", "2", "--threads", "1", "--out", str(tmp_path / "out")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = read_rows(tmp_path / "out" / "kinetic_control.csv")
    assert [row["asked"] for row in summary] == ["persistent", "plateau", "washout"]
    assert all(sum(int(row[f"made_{t}"]) for t in ("persistent", "plateau", "washout")) == 1 for row in summary)
    assert "made as asked:" in completed.stdout
    plain = kinetic_bundle(tmp_path / "plain", None, kinetic=False)
    refused = subprocess.run([*command[:3], str(plain), *command[4:]], capture_output=True, text=True, timeout=240)
    assert refused.returncode == 2 and "takes no curve type" in refused.stderr


def test_phase_coherence_measures_shared_texture(tmp_path):
    sys.path.insert(0, str(BENCH.parent))
    from bench.phase_coherence import residual_moments
    from test_cli_synthesize import kinetic_bundle

    rng = np.random.default_rng(0)
    texture = rng.normal(size=(3, 12, 12, 12))
    phases = np.stack([texture[0], 2.0 * texture[0] + 5.0, texture[1]])  # phase 1 shares phase 0's texture
    inside = np.zeros((12, 12, 12), bool)
    inside[2:10, 2:10, 2:10] = True
    row = residual_moments(phases, inside)
    assert row["corr_0_1"] > 0.999 and abs(row["corr_0_2"]) < 0.2
    assert abs(row["hp_sd_1"] / row["hp_sd_0"] - 2.0) < 1e-9

    bundle = kinetic_bundle(tmp_path / "bundle", None, kinetic=False)
    command = [sys.executable, str(BENCH / "phase_coherence.py"), "--bundle", str(bundle), "--n", "2", "--shape",
               "128", "128", "48", "--steps", "2", "--threads", "1", "--out", str(tmp_path / "out")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = read_rows(tmp_path / "out" / "phase_coherence.csv")
    assert {row["source"] for row in rows} == {"real", "diffusion", "autoencoder-control"}
    assert all(-1.0 <= float(row["corr_1_2"]) <= 1.0 for row in rows)
