"""`synbt export` on small phantoms with the handcrafted method: layout, resumability, shards."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SynBTLib import export
from SynBTLib.cli import main
from SynBTLib.errors import SynBTError
from SynBTLib.io import read_case, read_dataset, read_image
from SynBTLib.phantom import make_phantom, write_phantom

from test_pipeline import pipeline  # noqa: F401  (a fixture: the tiny pipeline)

SETTINGS = dict(num_cases=3, tumors_per_case=1, size_mm=(10.0, 16.0), seed=7)
NUM_PHASES = 3
FILE_OPS_PER_CASE = 2 * (NUM_PHASES + 2)  # every image, the label and the synthetic-tumor mask: written, then moved


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two phantom cases: one with a tumor (and its label), one without."""
    root = tmp_path_factory.mktemp("source")
    for seed, tumors in ((0, 1), (1, 0)):
        phantom = make_phantom(seed=seed, shape=(64, 64, 24), phases=NUM_PHASES, tumors=tumors)
        write_phantom(phantom, root / f"case{seed}", montage=False)
    return root


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """An unsharded nnU-Net export of three cases."""
    out = tmp_path_factory.mktemp("reference") / "Dataset501_SynBT"
    made = export.export_dataset(source, out, export.ExportSettings(**SETTINGS), log=lambda message: None)
    assert made == ["SynBT_000", "SynBT_001", "SynBT_002"]
    return out


def case_content(out: Path, name: str):
    """A case's provenance and every file's voxels and geometry."""
    provenance = json.loads((out / "provenance" / f"{name}.json").read_text())
    return provenance, [read_image(out / rel) for rel in provenance["files"]]


def assert_same_cases(out_a: Path, out_b: Path, names):
    for name in names:
        (prov_a, files_a), (prov_b, files_b) = case_content(out_a, name), case_content(out_b, name)
        assert prov_a == prov_b
        for (array_a, geometry_a), (array_b, geometry_b) in zip(files_a, files_b, strict=True):
            assert geometry_a == geometry_b and np.array_equal(array_a, array_b)


def visible_files(out: Path):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_nnunet_layout_labels_and_geometry(source, reference):
    dataset = json.loads((reference / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "pre", "1": "post1", "2": "post2"}
    assert dataset["labels"] == {"background": 0, "tumor": 1}
    assert dataset["numTraining"] == 3 and dataset["file_ending"] == ".nii.gz"
    assert len(list((reference / "imagesTr").iterdir())) == 3 * NUM_PHASES
    assert len(list((reference / "labelsTr").iterdir())) == 3

    sources = {ref.case_id: ref for ref in read_dataset(source)}
    exported = read_dataset(reference)  # our own nnU-Net reader finds every case, phases and label
    assert [ref.case_id for ref in exported] == ["SynBT_000", "SynBT_001", "SynBT_002"]
    for ref in exported:
        provenance = json.loads((reference / "provenance" / f"{ref.case_id}.json").read_text())
        original = sources[provenance["source_case"]]
        assert provenance["source_case"] == ["case0", "case1"][int(ref.case_id[-1]) % 2]
        assert provenance["method"] == "handcrafted" and provenance["seed"] == 7
        (tumor,) = provenance["tumors"]
        assert 10.0 <= tumor["diameter_mm"] <= 16.0 and tumor["kind"] in ("ellipsoid", "lobulated", "spiculated")

        case, before = read_case(list(ref.phase_paths)), read_case(list(original.phase_paths))
        assert case.geometry == before.geometry
        label, label_geometry = read_image(ref.label_path)
        assert label_geometry == case.geometry and set(np.unique(label)) == {0, 1}
        old_tumor = read_image(original.label_path)[0]  # the phantom without a tumor has an empty label
        assert old_tumor.any() == (original.case_id == "case0")
        assert np.all(label[old_tumor > 0] == 1)  # the existing tumor is kept
        assert int(label.sum()) == int((old_tumor > 0).sum()) + tumor["voxels"]  # plus the new one, disjoint
        centre = np.round(case.geometry.physical_to_index(tumor["center_mm"])).astype(int)[::-1]
        new_tumor = (label > 0) & (old_tumor == 0)
        assert new_tumor[tuple(centre)]
        changed = np.any(case.phases != before.phases, axis=0)
        assert changed[new_tumor].mean() > 0.9  # the synthesized tumor is in the images ...
        near = np.argwhere(changed) - centre
        assert np.abs(near * np.asarray(case.geometry.spacing[::-1])).max() < 40  # ... and nothing far from it changed


def test_interrupted_case_leaves_nothing_and_rerun_completes_identically(source, reference, tmp_path):
    out = tmp_path / "Dataset501_SynBT"
    settings = export.ExportSettings(**SETTINGS)
    # case 0 completes; case 1 fails after its files are written and two of them are moved into place
    with pytest.raises(export.InjectedFault):
        export.export_dataset(source, out, settings, log=print, fail_after_files=FILE_OPS_PER_CASE + NUM_PHASES + 4)
    assert export.is_done(out, "SynBT_000") and not export.is_done(out, "SynBT_001")
    assert visible_files(out) == sorted(
        ["export.json", "provenance/SynBT_000.json", "labelsTr/SynBT_000.nii.gz", "synthetic_masksTr/SynBT_000.nii.gz"]
        + [f"imagesTr/SynBT_000_000{k}.nii.gz" for k in range(NUM_PHASES)]
    )
    assert export.export_dataset(source, out, settings, log=print) == ["SynBT_001", "SynBT_002"]
    assert visible_files(out) == visible_files(reference)
    assert_same_cases(out, reference, ["SynBT_000", "SynBT_001", "SynBT_002"])


def test_killed_process_leftovers_are_cleaned_by_the_rerun(source, reference, tmp_path):
    out = tmp_path / "killed"
    # a real crash (os._exit, no cleanup) in a child process, part-way through moving case 0 into place
    script = (
        "import sys; from SynBTLib import export; "
        f"export.export_dataset(sys.argv[1], sys.argv[2], export.ExportSettings(**{SETTINGS!r}), "
        f"fail_after_files={NUM_PHASES + 2 + 2}, fail_hard=True)"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-c", script, str(source), str(out)], env=env, capture_output=True)
    assert child.returncode == 137, child.stderr.decode()[-2000:]
    assert not export.is_done(out, "SynBT_000")
    assert list(out.glob(".tmp-SynBT_000-*"))  # the crash left its temp folder and two moved files
    assert len(list((out / "imagesTr").iterdir())) == 2

    assert main(["export", "--source", str(source), "--out", str(out), "--num-cases", "3", "--format", "nnunet",
                 "--method", "handcrafted", "--tumors-per-case", "1", "--size-mm", "10", "16", "--seed", "7"]) == 0
    assert not list(out.glob(".tmp-*"))
    assert visible_files(out) == visible_files(reference)
    assert_same_cases(out, reference, ["SynBT_000", "SynBT_001", "SynBT_002"])


def test_shards_are_disjoint_complete_and_merge_equals_unsharded(source, reference, tmp_path, capsys):
    assert export.shard_indices(10, (1, 3)) == [1, 4, 7]
    parts = [export.shard_indices(10, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))
    out = tmp_path / "Dataset501_SynBT"
    args = ["export", "--source", str(source), "--out", str(out), "--num-cases", "3", "--format", "nnunet",
            "--method", "handcrafted", "--size-mm", "10", "16", "--seed", "7"]
    assert main(args + ["--shard", "1/2"]) == 0
    assert not (out / "dataset.json").exists()
    assert main(["export", "--merge", "--out", str(out), "--format", "nnunet"]) == 2
    assert "SynBT_000, SynBT_002" in capsys.readouterr().err  # the missing cases are named
    assert main(args + ["--shard", "0/2"]) == 0
    assert main(["export", "--merge", "--out", str(out), "--format", "nnunet"]) == 0
    assert visible_files(out) == visible_files(reference)
    assert json.loads((out / "dataset.json").read_text()) == json.loads((reference / "dataset.json").read_text())
    assert_same_cases(out, reference, ["SynBT_000", "SynBT_001", "SynBT_002"])


def test_monai_datalist_points_at_synbt_case_folders(source, reference, tmp_path):
    out = tmp_path / "monai"
    settings = export.ExportSettings(**{**SETTINGS, "num_cases": 2, "format": "monai"})
    export.export_dataset(source, out, settings, log=print)
    training = json.loads((out / "datalist.json").read_text())["training"]
    assert [len(item["image"]) for item in training] == [NUM_PHASES, NUM_PHASES]
    for item in training:
        assert all((out / path).is_file() for path in item["image"] + [item["label"]])
    refs = read_dataset(out / "cases")  # each case folder is a SynBT case folder
    assert [ref.case_id for ref in refs] == ["SynBT_000", "SynBT_001"] and all(ref.label_path for ref in refs)
    # same seed and index: same tumor whatever the format
    nnunet_label = read_image(reference / "labelsTr" / "SynBT_001.nii.gz")[0]
    assert np.array_equal(read_image(refs[1].label_path)[0], nnunet_label)


def test_bad_requests_are_refused(source, reference, tmp_path):
    settings = export.ExportSettings(**SETTINGS)
    with pytest.raises(SynBTError, match="other settings.*seed"):
        export.export_dataset(source, reference, export.ExportSettings(**{**SETTINGS, "seed": 8}))
    with pytest.raises(SynBTError, match="input"):
        export.export_dataset(source, source / "export", settings)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(SynBTError, match="not empty"):
        export.export_dataset(source, tmp_path / "busy", settings)
    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(SynBTError, match="shard"):
            export.parse_shard(bad)
    with pytest.raises(SynBTError, match="size-mm"):
        export.ExportSettings(num_cases=1, size_mm=(20, 10))
    with pytest.raises(SynBTError, match="not monai"):
        export.merge(reference, "monai")



def test_kinetics_source_gives_every_tumor_the_curve_type_of_its_source_tumor(source, reference, pipeline, tmp_path):  # noqa: F811
    import torch

    from SynBTLib.bundle import save_bundle
    from SynBTLib.kinetics import classify_curve
    from SynBTLib.nets.denoiser import DenoiserConfig, MaskConditionedDenoiser
    from SynBTLib.nets.scheduler import SchedulerConfig
    from test_denoiser import randomize_zero_parameters
    from test_pipeline import MARGINS

    torch.manual_seed(1)
    denoiser = randomize_zero_parameters(MaskConditionedDenoiser(DenoiserConfig(
        channels=(8, 16, 16), attention_levels=(False, False, True), num_head_channels=8, norm_num_groups=4,
        kinetic_classes=True)))
    meta = {"phases": NUM_PHASES, **MARGINS}
    bundle = save_bundle(tmp_path / "kinetic", pipeline.autoencoder, denoiser, SchedulerConfig(), pipeline.latent_scale,
                         meta=meta, card_text="# tiny\n")
    settings = export.ExportSettings(**{**SETTINGS, "num_cases": 6}, method="diffusion", bundle=str(bundle), steps=2,
                                     kinetics="source")
    out = tmp_path / "Dataset501_SynBT"
    export.export_dataset(source, out, settings, log=lambda message: None)
    refs = {ref.case_id: ref for ref in read_dataset(source)}
    with_tumor = 0
    for index in range(6):
        record = json.loads(export.provenance_path(out, settings.case_name(index)).read_text())
        made = record["tumors"][0]["synthesis"]["kinetics"]
        ref = refs[record["source_case"]]
        label = read_image(ref.label_path)[0] > 0 if ref.label_path is not None else None
        if label is None or not label.any():  # no source tumor: drawn by the seed
            assert made in ("persistent", "plateau", "washout")
            continue
        case = read_case(list(ref.phase_paths))
        assert made == classify_curve(case.phases[:, label].mean(axis=1))
        with_tumor += 1
    assert with_tumor == 3  # the two sources in turn: one with a tumor, one without
    assert json.loads((out / export.SETTINGS_FILE).read_text())["settings"]["kinetics"] == "source"
    # an export without --kinetics records no such key, so exports made before the option still resume
    assert "kinetics" not in json.loads((reference / export.SETTINGS_FILE).read_text())["settings"]
    with pytest.raises(SynBTError, match="unknown --kinetics"):
        export.ExportSettings(num_cases=1, kinetics="fast")
    with pytest.raises(SynBTError, match="--kinetics.*diffusion method"):
        export.ExportSettings(num_cases=1, method="handcrafted", kinetics="washout")
    plain = save_bundle(tmp_path / "plain", pipeline.autoencoder, pipeline.denoiser, SchedulerConfig(),
                        pipeline.latent_scale, meta=meta, card_text="# tiny\n")
    with pytest.raises(SynBTError, match="--kinetics.*curve type"):
        export.export_dataset(source, tmp_path / "x", export.ExportSettings(
            num_cases=1, method="diffusion", bundle=str(plain), steps=2, kinetics="washout"))


def test_necrosis_option_gives_every_tumor_a_core_or_none_and_is_refused_where_it_does_not_apply(source, tmp_path):
    from test_cli_synthesize import kinetic_bundle

    # drawn: never (frequency 0), so every core below comes from the option
    bundle = kinetic_bundle(tmp_path / "necrotic", None, kinetic=False, necrosis=True, necrosis_frequency=0.0)
    cores = {}
    for option in (True, False, None):
        settings = export.ExportSettings(**SETTINGS, method="diffusion", bundle=str(bundle), steps=2, necrosis=option)
        out = tmp_path / f"out_{option}"
        export.export_dataset(source, out, settings, log=lambda message: None)
        cores[option] = [json.loads(export.provenance_path(out, settings.case_name(i)).read_text())
                         ["tumors"][0]["synthesis"]["necrotic_core_voxels"] for i in range(SETTINGS["num_cases"])]
        recorded = json.loads((out / export.SETTINGS_FILE).read_text())["settings"]
        assert recorded["necrosis"] is option if option is not None else "necrosis" not in recorded
    assert all(n > 0 for n in cores[True]) and cores[False] == cores[None] == [0] * SETTINGS["num_cases"]
    with pytest.raises(SynBTError, match="necrosis"):  # resuming with another choice is refused
        export.export_dataset(source, tmp_path / "out_True", export.ExportSettings(
            **SETTINGS, method="diffusion", bundle=str(bundle), steps=2, necrosis=False), log=lambda message: None)
    with pytest.raises(SynBTError, match="--necrosis.*diffusion method"):
        export.ExportSettings(num_cases=1, method="handcrafted", necrosis=True)
    with pytest.raises(SynBTError, match="true, false or unset"):
        export.ExportSettings(num_cases=1, necrosis="yes")
    plain = kinetic_bundle(tmp_path / "plain", None, kinetic=False)
    with pytest.raises(SynBTError, match="trained without necrotic cores"):
        export.export_dataset(source, tmp_path / "x", export.ExportSettings(
            num_cases=1, method="diffusion", bundle=str(plain), steps=2, necrosis=True))
    assert not (tmp_path / "x").exists()
    # the command line: refused in one line before anything is written
    out = tmp_path / "cli"
    assert main(["export", "--source", str(source), "--out", str(out), "--num-cases", "1", "--format", "nnunet",
                 "--method", "handcrafted", "--necrosis", "yes"]) == 2
    assert not out.exists()
    # a denoiser trained with cores whose bundle records no necrotic training tumor: no core size to draw
    from SynBTLib.pipeline import SynthesisPipeline

    stats_free = SynthesisPipeline.from_bundle(bundle)
    stats_free.necrosis = {}
    assert "no necrotic training tumors" in stats_free.core_refusal(True)
    assert stats_free.core_refusal(False) is None and stats_free.core_refusal(None) is None


def test_progress_is_reported_within_a_case_and_a_foreign_output_is_refused_before_loading(source, tmp_path):
    from SynBTLib.handcrafted import HandcraftedSynthesizer

    settings = export.ExportSettings(num_cases=1, tumors_per_case=2, size_mm=(10.0, 12.0))
    messages = []
    export.make_synthetic_case(read_dataset(source)[0], 0, settings, HandcraftedSynthesizer(), progress=messages.append)
    assert messages[0].startswith("reading")
    for tumor in ("tumor 1/2", "tumor 2/2"):
        assert any(m.startswith(f"placing {tumor}") for m in messages)
        assert any(m.startswith(f"{tumor}:") for m in messages)  # the synthesizer's own steps, within the case
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    bad_bundle = export.ExportSettings(num_cases=1, method="diffusion", bundle=str(tmp_path / "no_bundle"))
    with pytest.raises(SynBTError, match="not empty and holds no SynBT export"):
        export.export_dataset(source, foreign, bad_bundle, log=lambda m: None)  # not "no model bundle": checked first
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_bfloat16_export_agrees_with_float32_and_is_recorded(source, tmp_path):
    """`export --precision bfloat16` (the shipped bundle, on the CPU): same placements, and inside the
    synthesized region bf16 moves the voxels far less than the synthesis itself changed them. The
    precision is part of the export's settings (a rerun in float32 is refused); device and precision
    are in each case's provenance."""
    outs, phases = {}, {}
    for precision in ("float32", "bfloat16"):
        settings = export.ExportSettings(**{**SETTINGS, "num_cases": 1}, method="diffusion", steps=4,
                                         precision=precision)
        outs[precision] = tmp_path / precision
        export.export_dataset(source, outs[precision], settings, log=lambda message: None, device="cpu")
        provenance, files = case_content(outs[precision], "SynBT_000")
        assert (provenance["device"], provenance["precision"]) == ("cpu", precision)
        phases[precision] = np.stack([array for array, _ in files[:NUM_PHASES]])
        label = files[NUM_PHASES][0]  # then the label, then the synthetic-tumor mask
    recorded = json.loads((outs["bfloat16"] / export.SETTINGS_FILE).read_text())["settings"]
    assert recorded["precision"] == "bfloat16"
    assert "precision" not in json.loads((outs["float32"] / export.SETTINGS_FILE).read_text())["settings"]
    assert np.array_equal(label, read_image(outs["float32"] / "labelsTr" / "SynBT_000.nii.gz")[0])

    original = read_case(read_dataset(source)[0].phase_paths).phases
    changed = np.any(phases["float32"] != original, axis=0)
    assert changed.any() and np.all(np.isfinite(phases["bfloat16"]))
    synthesis_change = np.abs(phases["float32"] - original)[:, changed].mean()
    bf16_change = np.abs(phases["bfloat16"] - phases["float32"])[:, changed].mean()
    assert bf16_change < 0.2 * synthesis_change

    with pytest.raises(SynBTError, match="precision"):
        export.export_dataset(source, outs["bfloat16"], export.ExportSettings(
            **{**SETTINGS, "num_cases": 1}, method="diffusion", steps=4), log=lambda message: None, device="cpu")
    with pytest.raises(SynBTError, match="precision"):
        export.ExportSettings(**SETTINGS, precision="float16")


def test_export_command_takes_device_and_precision(source, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", "--source", str(source), "--out", str(out), "--num-cases", "1", "--format", "monai",
                 "--method", "handcrafted", "--device", "cpu", "--precision", "bfloat16"]) == 0
    provenance = json.loads((out / "provenance" / "SynBT_000.json").read_text())
    assert "device" not in provenance  # the handcrafted method runs no network: nothing to record
    assert main(["export", "--source", str(source), "--out", str(tmp_path / "tpu"), "--num-cases", "1",
                 "--format", "monai", "--method", "diffusion", "--steps", "2", "--device", "tpu"]) != 0
    assert "device 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "tpu" / "provenance").exists()
