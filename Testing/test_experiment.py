"""The segmentation study: the ci preset end to end (every arm, pairing, intervals from the per-lesion
table, size bins, resume), the bootstrap against analytic intervals, lesion-wise Dice, the cohort."""
import csv
import json

import numpy as np
import pytest

from SynBTLib import cli
from SynBTLib.errors import SynBTError
from SynBTLib.experiment import ARMS, COMPARISONS, StudyPlan, plan_with_overrides, report_finished, run_study
from SynBTLib.study_cohort import cohort_plan, lesion_dice, lesion_instances, synthetic_tumors
from SynBTLib.study_stats import MDD_FACTOR, bootstrap_mean, paired_difference, projected_se, variance_components


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "ci"
    messages = []
    summary = run_study(out, StudyPlan.preset_plan("ci"), log=messages.append)
    return out, summary, messages


def test_ci_study_runs_every_arm_on_the_same_lesions(ci_study):
    out, summary, messages = ci_study
    plan = StudyPlan.preset_plan("ci")
    assert list(summary["arms"]) == list(ARMS)
    rows = _csv(out / "results" / "per_lesion.csv")
    keys = {arm: sorted((r["seed"], r["case"], r["lesion"]) for r in rows if r["arm"] == arm) for arm in ARMS}
    assert all(k == keys["real"] for k in keys.values())  # every arm scored every seed on the same lesions
    lesions = {(r["case"], r["lesion"]) for r in rows}
    assert len({r["case"] for r in rows}) == plan.test_cases and len(lesions) == summary["test"]["lesions"]
    assert sum(summary["test"]["lesions_by_bin"].values()) == len(lesions)
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert len(_csv(out / "results" / "per_case.csv")) == len(ARMS) * 2 * plan.test_cases
    assert (out / "results" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Paired differences" in (out / "results" / "summary.md").read_text()
    assert any("unit 14/14" in m for m in messages)


def test_ci_study_offline_sets_match_and_arms_train_as_designed(ci_study):
    out, _, _ = ci_study
    for split in ("train", "train_small"):
        handcrafted = synthetic_tumors(out / "synthetic" / f"{split}_handcrafted")
        assert handcrafted and handcrafted == synthetic_tumors(out / "synthetic" / f"{split}_diffusion")
    synthetic = {arm: sum(float(r["synthetic"]) for r in _csv(out / "runs" / arm / "seed_0" / "losses.csv"))
                 for arm in ARMS}
    assert synthetic["real"] == synthetic["gap_real"] == 0
    assert all(synthetic[a] > 0 for a in ARMS if a not in ("real", "gap_real"))
    configs = {arm: json.loads((out / "runs" / arm / "seed_0" / "config.json").read_text()) for arm in ARMS}
    assert configs["onthefly"]["synthetic"]["mode"] == "on-the-fly"
    assert configs["offline"]["synthetic"]["dir"].endswith("train_diffusion")
    assert configs["gap_offline"]["synthetic"]["dir"].endswith("train_small_diffusion")
    # synthetic patches are drawn as the real ones (a share on background), in every synthetic arm alike
    assert {configs[a]["synthetic"]["pos_fraction"] for a in ARMS if a not in ("real", "gap_real")} == {None}
    assert {c["model"]["channels"] == configs["real"]["model"]["channels"] for c in configs.values()} == {True}
    model = json.loads((out / "runs" / "gap_real" / "seed_0" / "model" / "config.json").read_text())
    assert model["data_dir"].endswith("train_small")


def test_ci_study_intervals_come_from_the_per_lesion_table(ci_study):
    out, summary, _ = ci_study
    plan = StudyPlan.preset_plan("ci")
    rows = _csv(out / "results" / "per_lesion.csv")
    reported = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    assert set(reported) == set(COMPARISONS)
    for (a, b), comparison in reported.items():
        dice = {(r["arm"], r["seed"], r["case"], r["lesion"]): float(r["dice"]) for r in rows}
        diffs = [dice[(a, s, c, l)] - dice[(b, s, c, l)] for (arm, s, c, l) in dice if arm == a]
        d = comparison["difference"]
        assert d["mean"] == pytest.approx(np.mean(diffs), abs=1e-4)
        assert d["ci95"][0] <= d["mean"] + 1e-9 and d["mean"] - 1e-9 <= d["ci95"][1]
        assert d["mdd80"] == pytest.approx(MDD_FACTOR * d["se"])
        again = paired_difference(rows, a, b, n_boot=plan.bootstrap, seed=plan.cohort_seed)
        assert again.mean == pytest.approx(d["mean"], abs=1e-4)
        assert again.low == pytest.approx(d["ci95"][0], abs=2e-4) and again.high == pytest.approx(d["ci95"][1], abs=2e-4)
        for size_bin, value in comparison["by_bin"].items():
            in_bin = [dice[(a, s, c, l)] - dice[(b, s, c, l)] for (arm, s, c, l) in dice
                      if arm == a and next(r["size_bin"] for r in rows if (r["case"], r["lesion"]) == (c, l)) == size_bin]
            assert (value is None) == (not in_bin)
            if value:
                assert value["mean"] == pytest.approx(np.mean(in_bin), abs=1e-4)


def test_ci_study_resumes_from_finished_units(ci_study):
    out, summary, _ = ci_study
    plan = StudyPlan.preset_plan("ci")
    metrics = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/seed_*/metrics.json")}
    assert len(metrics) == len(ARMS) * 2
    removed = out / "runs" / "offline" / "seed_1" / "metrics.json"
    removed.unlink()
    partial = report_finished(out, plan, log=lambda m: None)  # what a still-running study has so far
    assert partial["arms"]["offline"]["seeds"] == [0] and "partial: seeds 0 of 0, 1" in partial["notes"][0]
    assert partial["arms"]["real"]["seeds"] == [0]
    again = run_study(out, plan, log=lambda m: None)
    assert removed.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in metrics.items() if p != removed)
    assert again["arms"]["real"] == summary["arms"]["real"]
    # another selection of arms and seeds is the same study; another design is refused
    subset = run_study(out, plan_with_overrides(plan, arms=("real", "handcrafted"), seeds=(0,)), log=lambda m: None)
    assert list(subset["arms"]) == ["real", "handcrafted"]
    with pytest.raises(SynBTError, match="differing: steps"):
        run_study(out, plan_with_overrides(plan, steps=5), log=lambda m: None)


def test_ci_study_reports_far_false_positives_per_arm_and_paired(ci_study):
    out = ci_study[0]
    summary = json.loads((out / "results" / "summary.json").read_text())  # results/ as last written
    fp = {(r["arm"], r["seed"], r["case"]): float(r["fp_ml"]) for r in _csv(out / "results" / "per_case.csv")}
    for arm, row in summary["arms"].items():
        assert row["fp_ml"]["mean"] == pytest.approx(np.mean([v for k, v in fp.items() if k[0] == arm]), rel=1e-6)
    assert summary["comparisons"]
    lines = (out / "results" / "summary.md").read_text().splitlines()
    for c in summary["comparisons"]:
        diffs = [fp[(c["a"], s, case)] - fp[(c["b"], s, case)] for (arm, s, case) in fp if arm == c["a"]]
        d = c["fp_ml_difference"]
        assert d["mean"] == pytest.approx(np.mean(diffs), rel=1e-6, abs=1e-6)
        assert d["ci95"][0] - 1e-9 <= d["mean"] <= d["ci95"][1] + 1e-9
        row = next(line for line in lines if line.startswith(f"| {c['a']} - {c['b']} |"))
        assert row.rstrip(" |*").endswith(f"{d['ci95'][1]:+.2f}]")  # the paired far-FP interval: the last column


def test_a_study_folder_from_before_keeps_its_synthetic_sampling(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    plan = plan_with_overrides(StudyPlan.preset_plan("ci"), arms=("real", "handcrafted"), seeds=(0,))
    saved = plan.to_dict()
    del saved["synthetic_pos_fraction"]  # a study.json written before the setting existed
    (out / "study.json").write_text(json.dumps(saved))
    assert StudyPlan.from_dict(saved).synthetic_pos_fraction == 1.0
    for _ in range(2):  # started, then resumed: the folder never becomes a mix of two samplings
        summary = run_study(out, plan, log=lambda m: None)
        assert any("predates synthetic_pos_fraction" in n for n in summary["notes"])
        assert "synthetic_pos_fraction" not in json.loads((out / "study.json").read_text())
    config = json.loads((out / "runs" / "handcrafted" / "seed_0" / "config.json").read_text())
    assert config["synthetic"]["pos_fraction"] == 1.0  # its units keep every synthetic patch on a tumor
    assert any("predates" in n for n in report_finished(out, plan, log=lambda m: None)["notes"])
    with pytest.raises(SynBTError, match="synthetic_pos_fraction"):
        StudyPlan(synthetic_pos_fraction=1.5)


def test_bootstrap_interval_matches_the_analytic_one():
    rng = np.random.default_rng(7)
    n = 400
    values = rng.normal(0.03, 0.2, size=(1, n))
    result = bootstrap_mean(values, np.arange(n), n_boot=4000, seed=1)
    se = values.std(ddof=0) / np.sqrt(n)
    assert result.mean == pytest.approx(values.mean())
    assert result.se == pytest.approx(se, rel=0.08)
    assert result.low == pytest.approx(values.mean() - 1.96 * se, abs=0.15 * 1.96 * se)
    assert result.high == pytest.approx(values.mean() + 1.96 * se, abs=0.15 * 1.96 * se)


def test_bootstrap_keeps_a_case_s_lesions_together_and_resamples_seeds():
    rng = np.random.default_rng(3)
    per_case = rng.normal(0.0, 0.2, size=300)
    twins = np.repeat(per_case, 2)[None]  # two identical lesions per case: no more information than one
    clustered = bootstrap_mean(twins, np.repeat(np.arange(300), 2), n_boot=4000, seed=0)
    assert clustered.se == pytest.approx(per_case.std() / np.sqrt(300), rel=0.1)
    naive = bootstrap_mean(twins, np.arange(600), n_boot=4000, seed=0)
    assert naive.se < clustered.se / 1.25  # treating them as independent would understate the error
    seed_effect = rng.normal(0.0, 0.05, size=(60, 1)) + np.zeros((60, 20))  # only the training seed varies
    over_seeds = bootstrap_mean(seed_effect, np.arange(20), n_boot=4000, seed=0)
    assert over_seeds.se == pytest.approx(seed_effect[:, 0].std() / np.sqrt(60), rel=0.12)
    assert bootstrap_mean(seed_effect, np.arange(20), n_boot=500, seed=0, resample_seeds=False).se < 1e-12


def test_variance_components_recover_known_ones_and_project_the_error():
    rng = np.random.default_rng(11)
    seeds, cases = 40, 300
    values = (rng.normal(0, 0.05, (seeds, 1)) + rng.normal(0, 0.1, (1, cases)) + rng.normal(0, 0.2, (seeds, cases)))
    parts = variance_components(values, np.arange(cases))
    assert parts["seed"] == pytest.approx(0.05**2, rel=0.35)
    assert parts["case"] == pytest.approx(0.1**2, rel=0.2)
    assert parts["residual"] == pytest.approx(0.2**2, rel=0.05)
    measured = bootstrap_mean(values, np.arange(cases), n_boot=3000, seed=2).se
    assert projected_se(parts, seeds, cases) == pytest.approx(measured, rel=0.2)
    assert projected_se(parts, seeds, 4 * cases) < projected_se(parts, seeds, cases)
    assert projected_se(parts, 4 * seeds, cases) < projected_se(parts, seeds, cases)


def test_paired_difference_pairs_by_seed_and_lesion():
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1, 2):
        for case in range(10):
            for lesion in (0, 1):
                value = float(rng.random())
                rows.append({"arm": "a", "seed": seed, "case": f"c{case}", "lesion": lesion, "dice": value})
                if seed != 2:  # arm b lacks seed 2: only the shared seeds are compared
                    rows.append({"arm": "b", "seed": seed, "case": f"c{case}", "lesion": lesion, "dice": value - 0.1})
    rng.shuffle(rows)
    result = paired_difference(rows, "a", "b", n_boot=300)
    assert result.mean == pytest.approx(0.1) and result.low == pytest.approx(0.1) and result.high == pytest.approx(0.1)
    assert (result.n_seeds, result.n_cases, result.n_lesions) == (2, 10, 20)
    assert paired_difference(rows, "a", "b", lesions=[("c0", "1")], n_boot=50).n_lesions == 1
    assert paired_difference(rows, "a", "missing") is None


def test_lesion_dice_counts_nearby_false_positives_and_reports_far_ones():
    instances = np.zeros((10, 40, 40), np.uint8)
    instances[4:6, 5:9, 5:9] = 1  # 32 voxels
    instances[4:6, 30:34, 30:34] = 2
    prediction = instances == 1
    prediction[4:6, 9:11, 5:9] = True  # 16 voxels next to lesion 1 (within 3 mm)
    prediction[0, 20, 0:5] = True  # 5 voxels far from both
    dices, outside = lesion_dice(prediction, instances, (1.0, 1.0, 1.0), margin_mm=3.0)
    assert dices[1] == pytest.approx(2 * 32 / (48 + 32))
    assert dices[2] == 0.0 and outside == 5


def test_lesion_instances_give_a_detached_part_to_the_nearest_lesion():
    from SynBTLib.case import Geometry

    geometry = Geometry(size=(30, 20, 10), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                        direction=tuple(np.eye(3).ravel()))
    tumor = np.zeros((10, 20, 30), np.uint8)
    tumor[4:6, 4:8, 2:6] = 1
    tumor[5, 6, 9] = 1  # a detached spicule, nearer lesion 0
    tumor[4:6, 10:14, 22:26] = 1
    instances = lesion_instances(tumor, geometry, [(4.0, 6.0, 5.0), (24.0, 12.0, 5.0)])
    assert instances[5, 6, 9] == 1 and instances[4, 5, 3] == 1 and instances[4, 11, 23] == 2
    assert set(np.unique(instances)) == {0, 1, 2}


def test_cohort_draws_training_and_test_lesions_alike():
    plan = StudyPlan.preset_plan("cpu")
    cohort = cohort_plan(plan)
    assert cohort == cohort_plan(plan)
    sizes = {split: [d for c in cases for d in c["asked_mm"]] for split, cases in cohort.items()}
    assert len(sizes["test"]) >= 120
    for split in ("train", "val", "test"):  # no engineered gap: one range, spread evenly in log size
        assert plan.size_mm[0] <= min(sizes[split]) and max(sizes[split]) <= plan.size_mm[1]
        assert np.median(np.log(sizes[split])) == pytest.approx(np.mean(np.log(plan.size_mm)), abs=0.3)
    assert max(sizes["train_small"]) <= plan.gap_size_mm[1]
    seeds = [c["seed"] for cases in cohort.values() for c in cases]
    assert len(set(seeds)) == len(seeds)
    assert len(StudyPlan.preset_plan("paper").seeds) >= 5 and StudyPlan.preset_plan("paper").test_cases * 2 >= 120


def test_experiment_cli_refuses_unknown_arms_presets_and_foreign_folders(tmp_path, capsys):
    assert cli.main(["experiment", "--out", str(tmp_path / "a"), "--arms", "real", "magic"]) == 2
    assert "unknown arm(s) magic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["experiment", "--out", str(tmp_path / "a"), "--preset", "huge"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    assert cli.main(["experiment", "--out", str(tmp_path / "b"), "--preset", "ci", "--arms", "real"]) == 2
    assert "not empty and holds no study.json" in capsys.readouterr().err
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"
