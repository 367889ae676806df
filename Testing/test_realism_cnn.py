"""The CNN judge of the realism suite (real torch, tiny crops): it finds an obvious difference, stays
near chance on identically distributed classes, never splits a case across folds, repeats itself."""
import numpy as np
import pytest
from scipy import ndimage

from SynBTLib.errors import SynBTError
from SynBTLib.realism_cnn import case_folds, cross_validated_cnn_auc, judge_net, near_tumor, train_and_score

SIZE, CASES = 16, 20


def crop_set(seed: int, white: float):
    """Per case one real and one synthetic (C=6, 16^3) crop sharing the case's tumor mask: smooth
    random fields; the synthetic crop's intensity channels get white noise of sd ``white`` inside the
    tumor (0: the two classes are identically distributed)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((SIZE,) * 3) - (SIZE - 1) / 2
    crops, labels, groups = [], [], []
    for case in range(CASES):
        mask = (z ** 2 + y ** 2 + x ** 2 <= rng.uniform(3, 6) ** 2).astype(np.float32)
        for label in (0, 1):
            fields = ndimage.gaussian_filter(rng.normal(size=(5, SIZE, SIZE, SIZE)), (0, 2, 2, 2)) * 4 + 1
            fields = fields + mask * (1.0 + label * white * rng.normal(size=fields.shape))
            crops.append(np.concatenate([fields, mask[None]]).astype(np.float32))
            labels.append(label)
            groups.append(case)
    return np.stack(crops), np.array(labels), np.array(groups)


def test_the_judge_sees_noise_inside_the_tumor():
    crops, labels, groups = crop_set(0, white=0.5)
    result = cross_validated_cnn_auc(crops, labels, groups, epochs=20, resamples=200)
    assert result.auc > 0.9 and result.low > 0.7
    assert result.low <= result.auc <= result.high


def test_identical_classes_stay_near_chance_and_runs_repeat():
    crops, labels, groups = crop_set(1, white=0.0)
    first = cross_validated_cnn_auc(crops, labels, groups, epochs=10, seed=3, resamples=200)
    assert first.auc < 0.8 and first.low < 0.5 < first.high
    # every case lies in one fold, and each fold is scored once
    assert all(np.unique(first.fold[groups == g]).size == 1 for g in np.unique(groups))
    assert sorted(np.unique(first.fold).tolist()) == [0, 1, 2, 3, 4]
    again = cross_validated_cnn_auc(crops, labels, groups, epochs=10, seed=3, resamples=200)
    np.testing.assert_array_equal(first.scores, again.scores)
    other = cross_validated_cnn_auc(crops, labels, groups, epochs=10, seed=4, resamples=200)
    assert not np.array_equal(first.scores, other.scores)


def test_folds_keep_cases_whole_and_inputs_are_checked():
    labels = np.tile([0, 1, 1], 12)
    groups = np.repeat(np.arange(12), 3)
    splits = case_folds(labels, groups, folds=4, seed=0)
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested.tolist()) == list(range(labels.size))
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
    assert sum(p.numel() for p in judge_net(6).parameters()) < 60_000
    crops = np.zeros((36, 6, SIZE, SIZE, SIZE), np.float32)
    with pytest.raises(SynBTError, match="both classes"):
        cross_validated_cnn_auc(crops, np.zeros(36, int), groups)
    with pytest.raises(SynBTError, match="cases"):
        cross_validated_cnn_auc(crops[:6], labels[:6], groups[:6])
    with pytest.raises(SynBTError, match="crops"):
        cross_validated_cnn_auc(crops[:, :, :, :, :8], labels, groups)


def test_the_judge_sees_only_the_tumor_and_its_margin():
    crops, labels, groups = crop_set(3, white=0.5)
    kept = near_tumor(crops, margin=3.0)
    radius = np.sqrt(crops[0, -1].sum() * 3 / (4 * np.pi))
    assert kept.shape == (len(crops), 1, SIZE, SIZE, SIZE) and kept[0, 0, SIZE // 2, SIZE // 2, SIZE // 2]
    assert radius ** 3 < kept[0].sum() * 3 / (4 * np.pi) < (radius + 4) ** 3
    # what lies beyond the margin (the twin phantom's surroundings) changes no score
    changed = crops.copy()
    changed[:, :5][~np.broadcast_to(kept, changed[:, :5].shape)] += 10.0
    first = train_and_score(crops[4:], labels[4:], crops[:4], seed=0, epochs=2)
    again = train_and_score(crops[4:], labels[4:], changed[:4], seed=0, epochs=2)
    np.testing.assert_array_equal(first, again)
    whole = [train_and_score(crops[4:], labels[4:], test, seed=0, epochs=2, margin=None) for test in (crops[:4], changed[:4])]
    assert np.abs(whole[0] - whole[1]).max() > 1e-3  # without the margin it would


def test_bench_judges_every_source_against_real(tmp_path, capsys):
    import csv
    import json

    from bench.realism_cnn import main

    crops, labels, groups = crop_set(2, white=0.5)
    keep = groups < 6
    source = np.where(labels[keep] == 1, "all", "real")
    # an oracle control for the same cases, and a variant present for too few cases to fill the folds
    source = np.concatenate([source, ["oracle"] * 6, ["few"] * 2])
    case = np.concatenate([groups[keep], np.arange(6), [0, 1]])
    stack = np.concatenate([crops[keep], crops[labels == 0][:6], crops[labels == 1][:2]])
    path = tmp_path / "judge_crops.npz"
    np.savez_compressed(path, case=case, source=source, crops=stack)
    assert main(["--crops", str(path), "--epochs", "2", "--threads", "1"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "cnn_auc.csv")))
    assert [r["source"] for r in rows] == ["oracle", "all"]  # controls first; 'few' skipped
    assert all(r["real"] == r["synthetic"] == "6" for r in rows)
    assert all(float(r["ci_low"]) <= float(r["auc"]) <= float(r["ci_high"]) for r in rows)
    manifest = json.loads((tmp_path / "cnn_manifest.json").read_text())
    assert manifest["crops"] == str(path) and manifest["settings"]["epochs"] == 2
    assert "skipped few" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not in"):
        main(["--crops", str(path), "--sources", "autoencoder"])
    with pytest.raises(SystemExit, match="not found"):
        main(["--crops", str(tmp_path / "missing.npz")])
