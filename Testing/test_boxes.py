"""The one clipped bounding box, and the one file hasher."""
import hashlib

import numpy as np
import pytest

from SynBTLib.boxes import bounding_box, crop_padded, inside_volume, roi_box
from SynBTLib.errors import SynBTError
from SynBTLib.hashing import file_sha256, sha256_of


def test_bounding_box_grows_by_the_margin_and_stays_inside_the_array():
    mask = np.zeros((10, 12, 14), bool)
    mask[1, 5:7, 10:14] = True
    assert bounding_box(mask) == (slice(1, 2), slice(5, 7), slice(10, 14))
    assert bounding_box(mask, 2) == (slice(0, 4), slice(3, 9), slice(8, 14))  # clipped at 0 and at 14
    assert bounding_box(mask.astype(np.uint8), (0, 1, 3)) == (slice(1, 2), slice(4, 8), slice(7, 14))
    with pytest.raises(SynBTError, match="empty"):
        bounding_box(np.zeros((3, 3, 3)))


def test_a_network_box_reaching_outside_reads_padding_and_knows_which_voxels_are_real():
    mask = np.zeros((4, 20, 20), np.uint8)
    mask[2, 10, 10] = 1
    box = roi_box(mask, 2, 8)  # 8 slices from a 4-slice volume: centred, reaching 2 outside on each side
    assert box[0] == slice(-2, 6)
    inside = inside_volume(box, mask.shape)
    assert inside[2:6].all() and not inside[:2].any() and not inside[6:].any()
    assert crop_padded(mask, box, mode="constant")[inside].sum() == 1


def test_one_hasher_for_files_and_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"x" * 3_000_000)  # more than one read block
    (tmp_path / "d" / "b.txt").write_text("b")
    assert file_sha256(tmp_path / "d" / "a.bin") == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert sha256_of(tmp_path / "d" / "a.bin") == file_sha256(tmp_path / "d" / "a.bin")
    folder = sha256_of(tmp_path / "d")
    (tmp_path / "d" / "b.txt").write_text("c")
    assert sha256_of(tmp_path / "d") != folder
