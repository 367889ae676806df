"""A blinded reader study (visual Turing test): are synthetic tumors told apart from real ones?

``create_study`` draws real and synthetic case folders (each a case the engine reads with a
``tumor_labels.nii.gz``), renders one tumor-centred axial view per case (every phase and the early
subtraction, side by side) as ``images/<random id>.png`` and writes ``study.json`` (the item ids, in
no meaningful order) and ``key.json`` (the truth, never sent to a reader). Nothing a reader sees
names the source: the ids are random, the PNGs carry no text chunks, every view is windowed the
same way. Answers go to ``answers.sqlite`` one row per (reader, item) as they are given, so a reader
can stop and resume and several readers can answer at once. ``report`` gives each reader's
accuracy and the AUC of their confidence-weighted answers, with a bootstrap confidence interval,
and a ROC plot.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SynBTError

LABEL_FILE = "tumor_labels.nii.gz"
STUDY_FILE, KEY_FILE, ANSWERS_FILE, IMAGES = "study.json", "key.json", "answers.sqlite", "images"
ANSWERS = ("real", "synthetic")
CONFIDENCE = (1, 2, 3, 4, 5)
VIEW_MM = 64.0  # side of the tumor-centred field of view
VIEW_PX = 192  # pixels per panel side
BOOTSTRAP = 2000


# ---------------------------------------------------------------- creating a study

def study_cases(folder: str | Path) -> list[Path]:
    """Case folders under `folder` (itself or its sub-folders) that hold phases and a tumor label file."""
    from .datasets import find_phase_files

    folder = Path(folder)
    if not folder.is_dir():
        raise SynBTError(f"{folder} is not a folder")
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    return [c for c in candidates if (c / LABEL_FILE).is_file() and find_phase_files(c)]


def _panel(values: np.ndarray, low: float, high: float) -> np.ndarray:
    from PIL import Image

    scaled = np.clip((values - low) / max(high - low, 1e-6), 0, 1) * 255
    image = Image.fromarray(scaled.astype(np.uint8)).resize((VIEW_PX, VIEW_PX), Image.BILINEAR)
    return np.asarray(image)


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(panel)
    ImageDraw.Draw(image).text((4, 2), text, fill=255)
    return np.asarray(image)


def tumor_view(case_dir: Path) -> np.ndarray:
    """One uint8 image: the axial slice through the tumor centre, cropped to VIEW_MM around it, for every
    phase (one shared window from the pre-contrast phase's breast percentiles) and the early subtraction."""
    from .io import read_case, read_image

    case = read_case(case_dir)
    labels, _ = read_image(case_dir / LABEL_FILE)
    mask = labels > 0
    if mask.shape != case.shape or not mask.any():
        raise SynBTError(f"{case_dir / LABEL_FILE} is empty or not on the grid of the phases")
    z, y, x = np.argwhere(mask).mean(axis=0).round().astype(int)
    sx, sy = case.geometry.spacing[0], case.geometry.spacing[1]
    hy, hx = int(round(VIEW_MM / 2 / sy)), int(round(VIEW_MM / 2 / sx))
    phases = np.pad(case.phases[:, z], ((0, 0), (hy, hy), (hx, hx)), mode="constant")
    crop = phases[:, y : y + 2 * hy, x : x + 2 * hx]  # centred on (y, x) after the padding
    body = case.phases[0][case.phases[0] > 0]
    low, high = np.percentile(body, [1, 99.5]) if body.size else (0.0, 1.0)
    high_post = max(high, float(np.percentile(case.phases[1], 99.5)))
    panels = [_panel(p, low, high_post) for p in crop]
    subtraction = crop[1] - crop[0]
    panels.append(_panel(subtraction, 0.0, max(float(np.percentile(case.phases[1] - case.phases[0], 99.5)), 1e-6)))
    names = ["pre"] + [f"post {k}" for k in range(1, len(crop))] + ["post 1 - pre"]
    panels = [_label(panel, name) for panel, name in zip(panels, names)]
    gap = np.zeros((VIEW_PX, 4), np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    return np.concatenate(row, axis=1)


def create_study(real: str | Path, synthetic: str | Path, n: int, out: str | Path, seed: int = 0) -> Path:
    """Build a blinded study of n views (half real, half synthetic) in a new folder `out` (or an empty one).

    The study is built in a hidden sibling folder and renamed to `out` once complete: a failure on the way
    (an unreadable case, a label off its grid, Ctrl+C) leaves nothing behind, and `out` never holds half a study."""
    if n < 2 or n % 2:
        raise SynBTError(f"--n must be an even number of at least 2 (half real, half synthetic), got {n}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynBTError(f"{out} exists and is not empty; a study is never overwritten")
    pools = {"real": study_cases(real), "synthetic": study_cases(synthetic)}
    for kind, folder in (("real", real), ("synthetic", synthetic)):
        if len(pools[kind]) < n // 2:
            raise SynBTError(f"{folder} holds {len(pools[kind])} {kind} cases with {LABEL_FILE}; --n {n} needs {n // 2}")
    rng = np.random.default_rng(seed)
    chosen = [(kind, pools[kind][i]) for kind in ANSWERS for i in rng.choice(len(pools[kind]), n // 2, replace=False)]
    from .datasets import find_phase_files

    counts = {kind: {len(find_phase_files(folder)) for k, folder in chosen if k == kind} for kind in ANSWERS}
    if len(counts["real"] | counts["synthetic"]) > 1:  # the view's width and labels would tell them apart
        raise SynBTError(f"real and synthetic cases must have the same number of phases to be blinded; "
                         f"real {sorted(counts['real'])}, synthetic {sorted(counts['synthetic'])}")
    created = _missing_ancestors(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(out)
    work = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    work.mkdir()
    try:
        _write_study(work, chosen, rng)
        _publish(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created:  # the parents made for it, innermost first, while still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return out


def _write_study(folder: Path, chosen: list, rng: np.random.Generator) -> None:
    from PIL import Image

    order = rng.permutation(len(chosen))
    (folder / IMAGES).mkdir()
    items, key = [], {}
    for index in order:
        kind, case = chosen[index]
        item_id = rng.bytes(6).hex()
        Image.fromarray(tumor_view(case)).save(folder / IMAGES / f"{item_id}.png")  # PIL writes no text chunks
        items.append(item_id)
        key[item_id] = {"truth": kind, "source": str(Path(case).resolve())}
    (folder / KEY_FILE).write_text(json.dumps(key, indent=1))
    (folder / STUDY_FILE).write_text(json.dumps({"items": items, "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    Answers(folder).close()  # creates the database


ABANDONED_AFTER_S = 24 * 3600  # a build folder without a process id (older SynBT) this old is abandoned


def _remove_abandoned_builds(out: Path) -> None:
    """Delete the hidden build folders of `out` left by a create that was killed (SIGKILL, power loss):
    those whose process is gone (folders of an older SynBT, without a process id: a day old). A build of a
    create still running is left alone, and so is any folder whose owner cannot be told."""
    for folder in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        parts = folder.name.rsplit(".partial-", 1)[1].split("-")
        if len(parts) == 2 and parts[0].isdigit():
            abandoned = not _process_alive(int(parts[0]))
        else:
            abandoned = time.time() - folder.stat().st_mtime > ABANDONED_AFTER_S
        if abandoned:
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (True when that cannot be told)."""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        import ctypes

        kernel = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() != 87  # ERROR_INVALID_PARAMETER: no such process
        code = ctypes.c_ulong()
        kernel.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def _missing_ancestors(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, innermost first."""
    missing = []
    for parent in path.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _publish(work: Path, out: Path) -> None:
    """Rename the finished study to `out`; an (empty) `out` is replaced, one that got content meanwhile is not."""
    if out.is_dir():
        try:
            out.rmdir()  # only ever an empty folder: rmdir refuses anything else
        except OSError:
            raise SynBTError(f"{out} got content while the study was built; a study is never overwritten") from None
    try:
        work.rename(out)  # POSIX: fails rather than replace a folder with content
    except OSError as exc:
        raise SynBTError(f"cannot move the finished study to {out}: {exc}") from None


# ---------------------------------------------------------------- answering

def load_items(study: str | Path) -> list[str]:
    path = Path(study) / STUDY_FILE
    if not path.is_file():
        raise SynBTError(f"{study} is not a reader study (no {STUDY_FILE}); make one with `synbt reader-study create`")
    return list(json.loads(path.read_text())["items"])


def reader_order(items: list[str], reader: str) -> list[str]:
    """Each reader sees the items in an own order (fixed for that reader, so a resume continues it).
    Give the reader's first-given spelling (Answers.canonical), so every spelling of a name gets one order."""
    seed = int.from_bytes(hashlib.sha256(reader.encode()).digest()[:8], "little")
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def check_reader(name: str) -> str:
    """The name as given, without surrounding spaces; refused unless 1-64 letters, digits, spaces, '.', '_', '-'."""
    name = (name or "").strip()
    if not name or len(name) > 64 or not all(ch.isalnum() or ch in " ._-" for ch in name):
        raise SynBTError("a reader name is 1-64 letters, digits, spaces, '.', '_' or '-'")
    return name


def reader_identity(name: str) -> str:
    """Who a name stands for: case and spacing ignored ("Anna", "anna ", "ANNA" are one reader)."""
    return " ".join(name.split()).casefold()


class Answers:
    """The study's answers in SQLite: one row per (reader, item), written as soon as it is given.

    A reader is a name up to case and spacing (reader_identity): rows are stored under the spelling a
    reader first answered with, and read back by identity, so a database written before names were
    matched this way (the same table; "Anna" and "anna" as two names) reads as one reader, first answers kept."""

    def __init__(self, study: str | Path):
        self.items = set(load_items(study)) if (Path(study) / STUDY_FILE).is_file() else None
        self.db = sqlite3.connect(Path(study) / ANSWERS_FILE, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")  # several readers (processes) at once
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS answers (reader TEXT NOT NULL, item TEXT NOT NULL, answer TEXT NOT NULL,"
            " confidence INTEGER NOT NULL, answered_at REAL NOT NULL, PRIMARY KEY (reader, item))"
        )

    def canonical(self, reader: str) -> str:
        """The spelling this reader first answered with (the checked name itself for a new reader)."""
        name = check_reader(reader)
        identity = reader_identity(name)
        for stored, in self.db.execute("SELECT reader FROM answers GROUP BY reader ORDER BY MIN(answered_at), reader"):
            if reader_identity(stored) == identity:
                return stored
        return name

    def record(self, reader: str, item: str, answer: str, confidence: int) -> None:
        reader = self.canonical(reader)
        if self.items is not None and item not in self.items:
            raise SynBTError(f"no item '{item}' in this study")
        if answer not in ANSWERS:
            raise SynBTError(f"an answer is one of {ANSWERS}, got '{answer}'")
        if int(confidence) not in CONFIDENCE:
            raise SynBTError(f"confidence is 1-5, got {confidence}")
        if item in self.answered(reader):
            return  # the first answer given is kept (a double click, a second tab, another spelling)
        self.db.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?)",
                        (reader, item, answer, int(confidence), time.time()))

    def answered(self, reader: str) -> set[str]:
        identity = reader_identity(check_reader(reader))
        return {item for stored, item in self.db.execute("SELECT reader, item FROM answers")
                if reader_identity(stored) == identity}

    def rows(self) -> list[tuple[str, str, str, int]]:
        """Every stored answer, (reader as stored, item, answer, confidence), in the order given."""
        return list(self.db.execute("SELECT reader, item, answer, confidence FROM answers ORDER BY answered_at, rowid"))

    def close(self) -> None:
        self.db.close()


def next_item(study: str | Path, reader: str, answers: Answers) -> tuple[str | None, int, int]:
    """(the reader's next unanswered item or None, how many they answered, how many there are)."""
    reader = answers.canonical(reader)
    items = reader_order(load_items(study), reader)
    done = answers.answered(reader)
    remaining = [item for item in items if item not in done]
    return (remaining[0] if remaining else None), len(items) - len(remaining), len(items)


# ---------------------------------------------------------------- report

def suspicion(answer: str, confidence: int) -> int:
    """The reader's "synthetic" score on a 10-point scale: real 5 -> 1 ... real 1 -> 5, synthetic 1 -> 6 ... 5 -> 10."""
    return 5 + int(confidence) if answer == "synthetic" else 6 - int(confidence)


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) over every threshold, synthetic = positive."""
    thresholds = np.unique(scores)[::-1]
    positives, negatives = max(int(labels.sum()), 1), max(int((1 - labels).sum()), 1)
    tpr = [0.0] + [float(((scores >= t) & (labels == 1)).sum()) / positives for t in thresholds]
    fpr = [0.0] + [float(((scores >= t) & (labels == 0)).sum()) / negatives for t in thresholds]
    return np.array(fpr), np.array(tpr)


def bootstrap_auc_ci(scores: np.ndarray, labels: np.ndarray, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling real and synthetic items separately."""
    from .realism import auc

    rng = np.random.default_rng(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    values = []
    for _ in range(BOOTSTRAP):
        p, q = rng.choice(pos, pos.size), rng.choice(neg, neg.size)
        values.append(auc(np.concatenate([p, q]), np.r_[np.ones(p.size), np.zeros(q.size)]))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class ReaderResult:
    reader: str
    answered: int
    real: int
    synthetic: int
    correct: int
    accuracy: float
    auc: float | None
    auc_ci: tuple[float, float] | None


def report(study: str | Path, plot: bool = True) -> dict:
    """Per-reader accuracy and AUC (with CI) from the answers; writes report.json and roc.png in the study."""
    from .realism import auc

    study = Path(study)
    key = json.loads((study / KEY_FILE).read_text())
    answers = Answers(study)
    try:
        rows = answers.rows()
    finally:
        answers.close()
    names: dict[str, str] = {}  # reader identity -> first-given spelling
    firsts: dict[str, dict] = {}  # reader identity -> item -> first answer (older databases may hold more)
    for reader, item, answer, confidence in rows:
        identity = reader_identity(reader)
        names.setdefault(identity, reader)
        if item in key:
            firsts.setdefault(identity, {}).setdefault(item, (key[item]["truth"], answer, confidence))
    readers = {names[identity]: list(given.values()) for identity, given in firsts.items()}
    results, curves = [], {}
    for reader, given in sorted(readers.items()):
        labels = np.array([truth == "synthetic" for truth, _, _ in given], float)
        scores = np.array([suspicion(a, c) for _, a, c in given], float)
        correct = sum(truth == answer for truth, answer, _ in given)
        both = 0 < labels.sum() < labels.size
        value = auc(scores, labels) if both else None
        ci = bootstrap_auc_ci(scores, labels) if both else None
        if both:
            curves[reader] = roc_points(scores, labels)
        results.append(ReaderResult(reader, len(given), int((labels == 0).sum()), int(labels.sum()), int(correct),
                                    correct / len(given), value, ci))
    summary = {"items": len(key), "readers": [r.__dict__ for r in results]}
    (study / "report.json").write_text(json.dumps(summary, indent=1))
    if plot and curves:
        summary["roc_png"] = str(_plot_roc(curves, {r.reader: r for r in results}, study / "roc.png"))
    return summary


def _plot_roc(curves: dict, results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    for reader, (fpr, tpr) in curves.items():
        r = results[reader]
        ax.plot(fpr, tpr, marker="o", markersize=3,
                label=f"{reader}: AUC {r.auc:.2f} [{r.auc_ci[0]:.2f}, {r.auc_ci[1]:.2f}]")
    ax.set(xlabel="false positive rate (real called synthetic)", ylabel="true positive rate (synthetic found)",
           xlim=(0, 1), ylim=(0, 1), title="Reader study: telling synthetic from real")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_report(summary: dict) -> str:
    lines = [f"{summary['items']} items"]
    for r in summary["readers"]:
        auc_text = (f"AUC {r['auc']:.3f} (95% CI {r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f})" if r["auc"] is not None
                    else "AUC n/a (needs answers on both real and synthetic items)")
        lines.append(f"{r['reader']}: {r['answered']} answered ({r['real']} real, {r['synthetic']} synthetic), "
                     f"accuracy {r['accuracy']:.1%}, {auc_text}")
    if "roc_png" in summary:
        lines.append(f"ROC plot: {summary['roc_png']}")
    return "\n".join(lines)
