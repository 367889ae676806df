"""SynBTLib.datasets: SynBT case folders, nnU-Net v2 raw and MAMA-MIA layouts are found with phases in order."""
import json

import numpy as np
import pytest

from SynBTLib import Geometry, SynBTError
from SynBTLib.datasets import CaseRef, detect_layout, find_phase_files
from SynBTLib.io import read_case, read_dataset, read_mask, write_image, write_label

GEOMETRY = Geometry(size=(5, 4, 3), spacing=(0.9, 0.9, 2.0), origin=(1.0, -2.0, 3.0))


def write_phases(folder, name_of, count, case_value=0):
    """Phase k holds the constant 10 * case_value + k, so the order can be checked after reading."""
    for k in range(count):
        write_image(np.full(GEOMETRY.shape, 10 * case_value + k, np.float32), GEOMETRY, folder / name_of(k))


def write_tumor(path, value=1):
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[1, 1:3, 1:4] = value
    write_label(labels, GEOMETRY, path)


def phase_values(ref: CaseRef):
    return [float(p.mean()) for p in read_case(list(ref.phase_paths)).phases]


def test_folder_of_synbt_case_folders(tmp_path):
    write_phases(tmp_path / "case_b", lambda k: f"phase_{k}.nii.gz", 3, case_value=2)
    write_phases(tmp_path / "case_a", lambda k: f"phase_{k}.nii.gz", 3, case_value=1)
    write_tumor(tmp_path / "case_a" / "tumor_labels.nii.gz")
    (tmp_path / "notes").mkdir()  # a folder without phases is not a case

    refs = read_dataset(tmp_path)

    assert detect_layout(tmp_path) == "synbt"
    assert [r.case_id for r in refs] == ["case_a", "case_b"]
    assert refs[0].label_path == tmp_path / "case_a" / "tumor_labels.nii.gz"
    assert refs[1].label_path is None
    assert phase_values(refs[0]) == [10.0, 11.0, 12.0]
    assert phase_values(refs[1]) == [20.0, 21.0, 22.0]


def test_nnunet_v2_raw_layout(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "pre", "1": "post1", "2": "post2"}}))
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    write_phases(images, lambda k: f"BRCA_002_{k:04d}.nii.gz", 3, case_value=2)
    write_phases(images, lambda k: f"BRCA_001_{k:04d}.nii.gz", 3, case_value=1)
    write_tumor(labels / "BRCA_001.nii.gz", value=1)
    write_tumor(labels / "BRCA_002.nii.gz", value=1)
    write_phases(tmp_path / "imagesTs", lambda k: f"BRCA_101_{k:04d}.nii.gz", 3, case_value=5)

    refs = read_dataset(tmp_path)

    assert detect_layout(tmp_path) == "nnunet"
    assert [r.case_id for r in refs] == ["BRCA_001", "BRCA_002", "BRCA_101"]
    assert [p.name for p in refs[0].phase_paths] == ["BRCA_001_0000.nii.gz", "BRCA_001_0001.nii.gz", "BRCA_001_0002.nii.gz"]
    assert phase_values(refs[1]) == [20.0, 21.0, 22.0]
    assert refs[0].label_path == labels / "BRCA_001.nii.gz"
    assert refs[2].label_path is None  # test images have no labelsTs here
    case = read_case(list(refs[0].phase_paths))
    assert read_mask(refs[0].label_path, case.geometry).sum() == 6


def test_nnunet_case_with_a_missing_phase_is_refused(tmp_path):
    images = tmp_path / "imagesTr"
    write_phases(images, lambda k: f"BRCA_001_{k:04d}.nii.gz", 3)
    write_phases(images, lambda k: f"BRCA_002_{k:04d}.nii.gz", 3)
    (images / "BRCA_002_0001.nii.gz").unlink()
    with pytest.raises(SynBTError, match=r"case BRCA_002 \(imagesTr\) is missing phase\(s\) 1 \(found \[0, 2\]\)"):
        read_dataset(tmp_path)

    (images / "BRCA_002_0002.nii.gz").unlink()  # now phases 0 only: fewer than the other cases
    with pytest.raises(SynBTError, match=r"case BRCA_002 \(imagesTr\) is missing phase\(s\) 1, 2"):
        read_dataset(tmp_path)

    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {str(k): f"c{k}" for k in range(4)}}))
    with pytest.raises(SynBTError, match=r"case BRCA_001 \(imagesTr\) is missing phase\(s\) 3"):
        read_dataset(tmp_path)


def test_mama_mia_layout(tmp_path):
    for case_id, count, value in (("ISPY2_100", 5, 3), ("DUKE_001", 3, 1)):
        write_phases(tmp_path / "images" / case_id, lambda k, c=case_id: f"{c.lower()}_{k:04d}.nii.gz", count, value)
    write_tumor(tmp_path / "segmentations" / "expert" / "duke_001.nii.gz")
    write_tumor(tmp_path / "segmentations" / "expert" / "ispy2_100.nii.gz")

    refs = read_dataset(tmp_path)

    assert detect_layout(tmp_path) == "mama-mia"
    assert [r.case_id for r in refs] == ["DUKE_001", "ISPY2_100"]
    assert phase_values(refs[0]) == [10.0, 11.0, 12.0]
    assert phase_values(refs[1]) == [30.0, 31.0, 32.0, 33.0, 34.0]  # MAMA-MIA cases differ in phase count
    assert refs[0].label_path == tmp_path / "segmentations" / "expert" / "duke_001.nii.gz"

    (tmp_path / "images" / "DUKE_001" / "duke_001_0000.nii.gz").unlink()
    with pytest.raises(SynBTError, match=r"case duke_001 in .*DUKE_001 is missing phase\(s\) 0"):
        read_dataset(tmp_path)


def test_unrecognised_layouts_get_clear_messages(tmp_path):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "readme.txt").write_text("hello")
    with pytest.raises(SynBTError, match="is not a recognised data set layout"):
        read_dataset(tmp_path)
    with pytest.raises(SynBTError, match="data set folder not found"):
        read_dataset(tmp_path / "nope")

    single = tmp_path / "single"
    write_phases(single, lambda k: f"phase_{k}.nii.gz", 2)
    with pytest.raises(SynBTError, match="is a single case folder, not a data set"):
        read_dataset(single)

    mixed = tmp_path / "mixed"
    write_phases(mixed, lambda k: f"a_{k:04d}.nii.gz", 2)
    write_phases(mixed, lambda k: f"b_{k:04d}.nii.gz", 2)
    with pytest.raises(SynBTError, match=r"phase files of several cases \(a, b\)"):
        find_phase_files(mixed)

    one_phase = tmp_path / "one"
    write_phases(one_phase, lambda k: f"phase_{k}.nii.gz", 1)
    with pytest.raises(SynBTError, match="has only one phase"):
        find_phase_files(one_phase)


def test_a_monai_format_export_folder_reads_as_its_case_folders(tmp_path):
    import json

    import numpy as np

    from SynBTLib.case import Geometry
    from SynBTLib.datasets import detect_layout, read_dataset
    from SynBTLib.io import write_image, write_label

    geo = Geometry(size=(6, 5, 4), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    for name in ("SynBT_000", "SynBT_001"):
        folder = tmp_path / "export" / "cases" / name
        for k in range(2):
            write_image(np.full((4, 5, 6), k + 1.0, np.float32), geo, folder / f"phase_{k}.nii.gz")
        write_label(np.ones((4, 5, 6), np.uint8), geo, folder / "tumor_labels.nii.gz")
    (tmp_path / "export" / "datalist.json").write_text(json.dumps({"training": []}))
    assert detect_layout(tmp_path / "export") == "monai"
    refs = read_dataset(tmp_path / "export")
    assert [r.case_id for r in refs] == ["SynBT_000", "SynBT_001"]
    assert all(len(r.phase_paths) == 2 and r.label_path is not None for r in refs)
