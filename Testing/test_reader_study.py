"""The blinded reader study without a browser: create, answer (SQLite, resume, two readers), report."""
import json
from pathlib import Path

import numpy as np
import pytest

from SynBTLib import reader_study as rs
from SynBTLib.cli import main
from SynBTLib.errors import SynBTError
from SynBTLib.phantom import make_phantom, write_phantom


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """Three 'real' and three 'synthetic' phantom case folders with a tumor each (small grids)."""
    root = tmp_path_factory.mktemp("pools")
    for kind, seeds in (("real", (1, 2, 3)), ("synthetic", (11, 12, 13))):
        for seed in seeds:
            write_phantom(make_phantom(seed=seed, shape=(48, 48, 16), tumors=1), root / kind / f"{kind}_case_{seed}",
                          montage=False)
    return root


@pytest.fixture(scope="module")
def study(pools, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    assert main(["reader-study", "create", "--real", str(pools / "real"), "--synthetic", str(pools / "synthetic"),
                 "--n", "4", "--out", str(out), "--seed", "5"]) == 0
    return out


def _png_chunks(path: Path) -> list[str]:
    data, chunks, pos = path.read_bytes(), [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.append(data[pos + 4 : pos + 8].decode())
        pos += 12 + length
    return chunks


def test_created_study_is_blinded(study, pools):
    items = rs.load_items(study)
    key = json.loads((study / rs.KEY_FILE).read_text())
    assert len(items) == 4 and set(items) == set(key)
    assert sorted(v["truth"] for v in key.values()) == ["real", "real", "synthetic", "synthetic"]
    served = (study / rs.STUDY_FILE).read_text()
    assert "real" not in served and "synthetic" not in served  # nothing the reader's page reads names the truth
    for item in items:
        png = study / rs.IMAGES / f"{item}.png"
        assert set(_png_chunks(png)) <= {"IHDR", "IDAT", "IEND"}  # no text / time metadata
        assert "case" not in png.name
    # every view: all phases + subtraction side by side, a tumor at the centre brighter after contrast
    from PIL import Image

    image = np.asarray(Image.open(study / rs.IMAGES / f"{items[0]}.png"))
    panels = (image.shape[1] + 4) // (rs.VIEW_PX + 4)
    assert image.shape[0] == rs.VIEW_PX and panels == 4  # 3 phantom phases + subtraction
    centre = slice(rs.VIEW_PX // 2 - 8, rs.VIEW_PX // 2 + 8)
    pre, post1 = image[centre, centre], image[centre, rs.VIEW_PX + 4 :][:, centre]
    assert post1.mean() > pre.mean() + 20  # the view is centred on the tumor, which enhances


def test_answers_resume_and_two_readers(study):
    items = rs.load_items(study)
    first = rs.Answers(study)
    second = rs.Answers(study)  # another reader at the same time (own connection)
    try:
        item, done, total = rs.next_item(study, "Dr A", first)
        assert (done, total) == (0, 4)
        first.record("Dr A", item, "real", 4)
        second.record("Dr B", rs.next_item(study, "Dr B", second)[0], "synthetic", 2)
        # A stops; a new connection resumes where A left off, with A's next item (not the one answered)
        first.close()
        again = rs.Answers(study)
        nxt, done, _ = rs.next_item(study, "Dr A", again)
        assert done == 1 and nxt != item and nxt in items
        assert rs.reader_order(items, "Dr A")[1] == nxt
        again.record("Dr A", item, "synthetic", 1)  # a second answer to an item (double click) is ignored
        assert ("Dr A", item, "real", 4) in [tuple(r) for r in again.rows()]
        with pytest.raises(SynBTError, match="answer"):
            again.record("Dr A", nxt, "maybe", 3)
        with pytest.raises(SynBTError, match="confidence"):
            again.record("Dr A", nxt, "real", 7)
        with pytest.raises(SynBTError, match="item"):
            again.record("Dr A", "../../etc/passwd", "real", 3)
        with pytest.raises(SynBTError, match="reader"):
            again.record("<script>", nxt, "real", 3)
        again.close()
    finally:
        second.close()


def test_report_counts_accuracy_and_auc(pools, tmp_path):
    out = rs.create_study(pools / "real", pools / "synthetic", 6, tmp_path / "s6", seed=1)
    key = json.loads((out / rs.KEY_FILE).read_text())
    answers = rs.Answers(out)
    for item, entry in key.items():
        answers.record("perfect", item, entry["truth"], 5)  # always right, fully confident
        answers.record("real-sayer", item, "real", 3)  # always says real
    half = list(key)[:3]
    for item in half:
        answers.record("halfway", item, key[item]["truth"], 1)
    answers.close()
    summary = rs.report(out)
    by = {r["reader"]: r for r in summary["readers"]}
    assert by["perfect"]["answered"] == 6 and by["perfect"]["accuracy"] == 1.0 and by["perfect"]["auc"] == 1.0
    assert by["perfect"]["real"] == 3 and by["perfect"]["synthetic"] == 3
    assert by["real-sayer"]["accuracy"] == 0.5 and by["real-sayer"]["auc"] == 0.5
    low, high = by["real-sayer"]["auc_ci"]
    assert low <= 0.5 <= high
    assert by["halfway"]["answered"] == 3
    assert (out / "roc.png").stat().st_size > 0 and json.loads((out / "report.json").read_text())["items"] == 6
    text = rs.format_report(summary)
    assert "perfect" in text and "100.0%" in text


def test_bad_inputs(pools, study, tmp_path, capsys):
    with pytest.raises(SynBTError, match="even"):
        rs.create_study(pools / "real", pools / "synthetic", 3, tmp_path / "odd")
    with pytest.raises(SynBTError, match="needs"):
        rs.create_study(pools / "real", pools / "synthetic", 10, tmp_path / "big")
    assert main(["reader-study", "create", "--real", str(pools / "real"), "--synthetic", str(pools / "synthetic"),
                 "--n", "2", "--out", str(study)]) == 2  # an existing study is never overwritten
    assert "overwritten" in capsys.readouterr().err
    with pytest.raises(SynBTError, match="study"):
        rs.load_items(tmp_path)
    assert rs.suspicion("real", 5) == 1 and rs.suspicion("real", 1) == 5 and rs.suspicion("synthetic", 1) == 6


def test_real_and_synthetic_with_different_phase_counts_cannot_be_blinded(pools, tmp_path):
    mixed = tmp_path / "synthetic"
    for seed in (21, 22):
        write_phantom(make_phantom(seed=seed, shape=(48, 48, 16), tumors=1, phases=4), mixed / f"c{seed}", montage=False)
    with pytest.raises(SynBTError, match="phases") as error:
        rs.create_study(pools / "real", mixed, 4, tmp_path / "study")
    assert "real [3]" in str(error.value) and "synthetic [4]" in str(error.value)


def _copy_pool(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("damage", ["label off the grid", "truncated phase"])
def test_a_create_that_fails_half_way_leaves_nothing(pools, tmp_path, damage):
    from SynBTLib.io import read_image, write_label

    synthetic = _copy_pool(pools / "synthetic", tmp_path / "synthetic")
    bad = sorted(synthetic.iterdir())[-1]
    if damage == "label off the grid":  # readable, but not on the grid of its phases
        from SynBTLib.case import Geometry

        labels, g = read_image(bad / rs.LABEL_FILE)
        coarse = Geometry((g.size[0] // 2, g.size[1] // 2, g.size[2]), (2 * g.spacing[0], 2 * g.spacing[1], g.spacing[2]),
                          g.origin, g.direction)
        write_label(labels[:, ::2, ::2], coarse, bad / rs.LABEL_FILE)
    else:  # the phase file ends early, as after a full disk
        phase = sorted(bad.glob("*.nii*"))[1]
        phase.write_bytes(phase.read_bytes()[: phase.stat().st_size // 2])
    parent = tmp_path / "studies"
    parent.mkdir()
    (parent / "empty").mkdir()  # an empty folder is a fine target, and stays as it was on a failure
    for out in (parent / "s", parent / "empty", tmp_path / "new" / "deeper" / "s"):
        with pytest.raises(SynBTError) as error:  # n = 6 takes every case, the damaged one too
            rs.create_study(pools / "real", synthetic, 6, out, seed=2)
        assert bad.name in str(error.value)
        assert sorted(p.name for p in parent.iterdir()) == ["empty"] and not any((parent / "empty").iterdir())
        assert not (tmp_path / "new").exists()
    assert main(["reader-study", "create", "--real", str(pools / "real"), "--synthetic", str(synthetic),
                 "--n", "6", "--out", str(parent / "s")]) == 2
    assert sorted(p.name for p in parent.iterdir()) == ["empty"]
    # the same create without the damaged case succeeds, into the empty folder too
    import shutil

    shutil.rmtree(bad)
    _copy_pool(pools / "synthetic" / bad.name, bad)
    assert rs.create_study(pools / "real", synthetic, 6, parent / "empty", seed=2) == parent / "empty"
    assert len(rs.load_items(parent / "empty")) == 6 and sorted(p.name for p in parent.iterdir()) == ["empty"]


def test_reader_names_ignore_case_and_spacing(study):
    items = rs.load_items(study)
    answers = rs.Answers(study)
    try:
        first, _, _ = rs.next_item(study, "Anna Berg", answers)
        answers.record("Anna Berg", first, "real", 4)
        assert answers.canonical("  anna   BERG ") == "Anna Berg"
        nxt, done, _ = rs.next_item(study, "anna berg ", answers)  # resumes as the same reader, in her order
        assert done == 1 and nxt == rs.reader_order(items, "Anna Berg")[1]
        answers.record("ANNA BERG", first, "synthetic", 1)  # her item again, another spelling: ignored
        answers.record("ANNA BERG", nxt, "synthetic", 2)  # stored under the first-given spelling
        mine = [r for r in answers.rows() if rs.reader_identity(r[0]) == "anna berg"]
        assert mine == [("Anna Berg", first, "real", 4), ("Anna Berg", nxt, "synthetic", 2)]
    finally:
        answers.close()
    by = {r["reader"]: r for r in rs.report(study, plot=False)["readers"]}
    assert by["Anna Berg"]["answered"] == 2 and not any(r.casefold() == "anna berg" and r != "Anna Berg" for r in by)


def test_a_database_from_before_names_were_matched_reports_correctly(pools, tmp_path):
    """A database written by the earlier code (same table; names compared exactly, so "Anna" and "anna"
    were two readers and could both answer one item): one reader, her first answer per item kept."""
    import sqlite3

    out = rs.create_study(pools / "real", pools / "synthetic", 4, tmp_path / "old", seed=3)
    key = json.loads((out / rs.KEY_FILE).read_text())
    items = rs.load_items(out)
    (out / rs.ANSWERS_FILE).unlink()
    db = sqlite3.connect(out / rs.ANSWERS_FILE)
    db.execute("CREATE TABLE IF NOT EXISTS answers (reader TEXT NOT NULL, item TEXT NOT NULL, answer TEXT NOT NULL,"
               " confidence INTEGER NOT NULL, answered_at REAL NOT NULL, PRIMARY KEY (reader, item))")
    truth = {item: key[item]["truth"] for item in items}
    wrong = {"real": "synthetic", "synthetic": "real"}
    db.executemany("INSERT INTO answers VALUES (?, ?, ?, ?, ?)", [
        ("Anna", items[0], truth[items[0]], 5, 100.0),
        ("anna", items[0], wrong[truth[items[0]]], 5, 101.0),  # the same item again under another spelling
        ("anna", items[1], truth[items[1]], 3, 102.0),
        ("Dr Old", items[0], wrong[truth[items[0]]], 2, 103.0),
    ])
    db.commit()
    db.close()
    by = {r["reader"]: r for r in rs.report(out, plot=False)["readers"]}
    assert set(by) == {"Anna", "Dr Old"}
    assert by["Anna"]["answered"] == 2 and by["Anna"]["correct"] == 2 and by["Dr Old"]["correct"] == 0
    answers = rs.Answers(out)
    try:
        nxt, done, _ = rs.next_item(out, "ANNA", answers)
        assert done == 2 and nxt in items[2:] and rs.reader_order(items, "Anna").index(nxt) >= 0
        assert rs.next_item(out, "Dr Old", answers)[0] == [i for i in rs.reader_order(items, "Dr Old") if i != items[0]][0]
    finally:
        answers.close()
    columns = [row[1] for row in sqlite3.connect(out / rs.ANSWERS_FILE).execute("PRAGMA table_info(answers)")]
    assert columns == ["reader", "item", "answer", "confidence", "answered_at"]  # the table is left as it was


def test_a_killed_creates_hidden_build_is_removed_by_the_next_create(pools, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    parent = tmp_path / "studies"
    parent.mkdir()
    # a real create killed with SIGKILL while it builds: its hidden folder stays behind
    code = ("import sys, time; from SynBTLib import reader_study as rs\n"
            "def slow(*a, **k):\n    print('building', flush=True); time.sleep(60)\n"
            "rs._write_study = slow\n"
            f"rs.create_study({str(pools / 'real')!r}, {str(pools / 'synthetic')!r}, 4, {str(parent / 's')!r})\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "building"
    left = list(parent.glob(".s.partial-*"))
    assert len(left) == 1 and str(process.pid) in left[0].name
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    live = parent / f".s.partial-{os.getpid()}-feedbeef"  # a create of a process still running: kept
    live.mkdir()

    assert rs.create_study(pools / "real", pools / "synthetic", 4, parent / "s", seed=1) == parent / "s"
    assert sorted(p.name for p in parent.iterdir()) == sorted([live.name, "s"])


def test_build_folders_without_a_process_id_are_removed_only_when_old(pools, tmp_path):
    import os

    parent = tmp_path / "studies"
    parent.mkdir()
    old, recent = parent / ".s.partial-0a1b2c3d", parent / ".s.partial-9f8e7d6c"  # an older SynBT's names
    old.mkdir()
    recent.mkdir()
    day_ago = os.stat(old).st_mtime - rs.ABANDONED_AFTER_S - 60
    os.utime(old, (day_ago, day_ago))
    rs.create_study(pools / "real", pools / "synthetic", 4, parent / "s", seed=1)
    assert sorted(p.name for p in parent.iterdir()) == sorted([recent.name, "s"])  # may still be building
