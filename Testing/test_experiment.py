"""The synthetic-data experiment: end to end at a micro size, resume, refusals, the cohort plan."""
import csv
import json

import numpy as np
import pytest

from SynBTLib import cli
from SynBTLib.errors import SynBTError
from SynBTLib.experiment import ExperimentPlan, cohort_plan, plan_with_overrides, run_experiment


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_micro_experiment_end_to_end_and_resume(tmp_path):
    out, missing_bundle = tmp_path / "exp", tmp_path / "no_bundle"
    messages = []
    plan = ExperimentPlan.micro()
    summary = run_experiment(out, plan, seeds=[0], arms=["real", "handcrafted", "diffusion"], bundle=str(missing_bundle),
                             verbose=False, log=messages.append)

    assert [row["arm"] for row in summary] == ["real", "handcrafted"]
    assert any("diffusion) arm skipped" in m and str(missing_bundle) in m for m in messages)
    rows = _csv(out / "results.csv")
    assert [r["arm"] for r in rows] == ["real", "handcrafted"] and all(r["seeds"] == "1" for r in rows)
    for row in rows:
        assert 0.0 <= float(row["dice_mean"]) <= 1.0 and np.isfinite(float(row["hd95_mean_mm"]))
    assert "skipped" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "synthetic" / "handcrafted" / "labelsTr").glob("*.nii.gz"))) == plan.synthetic_cases
    assert len(list((out / "cohort" / "test").iterdir())) == plan.test_cases
    metrics = out / "runs" / "handcrafted" / "seed_0" / "metrics.json"
    assert len(json.loads(metrics.read_text())["cases"]) == plan.test_cases
    # the synthetic arm's batches really held synthetic samples, the real arm's none
    logged = {arm: _csv(out / "runs" / arm / "seed_0" / "losses.csv") for arm in ("real", "handcrafted")}
    assert {r["synthetic"] for r in logged["real"]} == {"0"}
    assert sum(float(r["synthetic"]) for r in logged["handcrafted"]) > 0

    # rerun: everything is done, nothing is recomputed, same results
    stamp = metrics.stat().st_mtime_ns
    again = run_experiment(out, plan, seeds=[0], arms=["real", "handcrafted"], verbose=False, log=messages.append)
    assert again == summary and metrics.stat().st_mtime_ns == stamp

    with pytest.raises(SynBTError, match="differing: steps"):
        run_experiment(out, plan_with_overrides(plan, steps=5), seeds=[0], arms=["real"], verbose=False)


def test_cohort_plan_is_fixed_and_tests_on_larger_tumors():
    plan = ExperimentPlan.default()
    cohort = cohort_plan(plan)
    assert cohort == cohort_plan(plan)
    assert [len(cohort[s]) for s in ("train", "val", "test")] == [plan.train_cases, plan.val_cases, plan.test_cases]
    assert max(c["tumor_mm"] for c in cohort["train"]) < min(c["tumor_mm"] for c in cohort["test"])
    seeds = [c["seed"] for split in cohort.values() for c in split]
    assert len(set(seeds)) == len(seeds)


def test_experiment_cli_refuses_unknown_arms_and_foreign_folders(tmp_path, capsys):
    assert cli.main(["experiment", "--out", str(tmp_path / "a"), "--arms", "real", "magic"]) == 2
    assert "unknown arm(s) magic" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    assert cli.main(["experiment", "--out", str(tmp_path / "b"), "--arms", "real"]) == 2
    assert "not empty and holds no experiment.json" in capsys.readouterr().err
