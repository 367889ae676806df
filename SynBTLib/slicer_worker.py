"""The Slicer module's worker processes, without Qt: inputs, command lines, progress, outputs, Stop.

Generate: the module writes the phases (and the tumor mask) as temporary NIfTI files, runs
``PythonSlicer -m SynBTLib synthesize ... --progress json`` in a separate process, shows the JSON
progress lines, and loads the outputs back. Export and Train run ``synbt export`` and
``synbt train-seg`` as CommandJobs: their log lines are shown as they come and their progress is
read from the files they write (see export_progress, train_progress). Everything here runs (and
is tested) outside Slicer.
"""
from __future__ import annotations

import csv
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .case import Case, StoredFormat
from .errors import SynBTError
from .synthesizers import check_request

MASK_FILE = "tumor_mask.nii.gz"
OUTPUT_LABEL_FILE = "tumor_labels.nii.gz"
WORKER_FORMAT = StoredFormat(".nii", "float32")  # phases handed to the worker and back (temporary files)
LOG_LINES_KEPT = 5000  # a worker's unread output lines kept (older ones are dropped)
STOP_GRACE_S = 10.0  # after Stop's interrupt, seconds before the worker's process group is killed


@dataclass
class SynthesisRequest:
    """What to synthesize: a method and its options. auto_size_mm set = place a tumor automatically."""

    method: str = "handcrafted"
    seed: int = 0
    steps: int | None = None
    bundle: str | None = None
    auto_size_mm: float | None = None
    center_mm: tuple[float, float, float] | None = None  # LPS, with auto_size_mm
    kinetics: str | None = None  # curve type for a bundle trained with kinetic classes (None: drawn by the seed)
    necrosis: str | None = None  # "yes" / "no": a necrotic core, for a bundle trained with cores (None: drawn)
    device: str = "auto"  # the networks' --device (auto: cuda when available)


@dataclass
class WorkerInputs:
    phase_paths: list[Path]
    mask_path: Path | None


@dataclass
class ProgressEvent:
    """One JSON line of `synbt synthesize --progress json`."""

    event: str  # "progress" or "done"
    done: int = 0
    total: int = 100
    message: str = ""
    out: str | None = None

    @property
    def percent(self) -> int:
        if self.event == "done":
            return 100
        return int(round(100 * self.done / self.total)) if self.total else 0


def write_worker_inputs(case: Case, mask: np.ndarray | None, work_dir: str | Path) -> WorkerInputs:
    """Write the phases (phase_<k>.nii, uncompressed: the worker's outputs keep it, and a temporary
    file need not pay for gzip) and the mask, if any, into work_dir/input."""
    from .io import write_case, write_label

    input_dir = Path(work_dir) / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    phase_paths = [Path(p) for p in write_case(case, input_dir, WORKER_FORMAT)]
    mask_path = None if mask is None else Path(write_label(mask, case.geometry, input_dir / MASK_FILE))
    return WorkerInputs(phase_paths, mask_path)


def start_in_work_dir(prefix: str, case: Case, mask: np.ndarray | None, command_for) -> tuple["WorkerProcess", Path]:
    """Write the inputs into a new temporary folder and start the worker on
    ``command_for(inputs, work_dir / "output")``; the folder is removed if anything fails."""
    work_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        inputs = write_worker_inputs(case, mask, work_dir)
        return WorkerProcess(command_for(inputs, work_dir / "output")), work_dir
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise


def python_executable() -> str:
    """Slicer's Python launcher when there is one (it sets up Slicer's libraries), else this Python."""
    return shutil.which("PythonSlicer") or sys.executable


def build_synthesize_command(python: str, inputs: WorkerInputs, out_dir: str | Path, request: SynthesisRequest) -> list[str]:
    """The `synthesize` command line for one request, with JSON progress on stdout."""
    checked = check_request(request.method, request.steps, request.kinetics, request.necrosis, request.bundle)
    command = [python, "-m", "SynBTLib", "synthesize", "--phases", *map(str, inputs.phase_paths)]
    if request.auto_size_mm is not None:
        command += ["--auto", "--size-mm", f"{float(request.auto_size_mm):g}"]
        if request.center_mm is not None:
            command += ["--center", *(f"{float(v):.6f}" for v in request.center_mm)]
    elif inputs.mask_path is not None:
        command += ["--mask", str(inputs.mask_path)]
    else:
        raise SynBTError("give a tumor mask or an automatic tumor size")
    command += ["--method", request.method, "--seed", str(int(request.seed))]
    if request.steps is not None:
        command += ["--steps", str(int(request.steps))]
    if request.bundle:
        command += ["--bundle", str(request.bundle)]
    if request.kinetics:
        command += ["--kinetics", str(request.kinetics)]
    if checked.necrosis is not None:
        command += ["--necrosis", necrosis_choice(checked.necrosis)]
    if request.device != "auto" and request.method != "handcrafted":
        command += ["--device", str(request.device)]
    return command + ["--out", str(out_dir), "--progress", "json"]


NECROSIS_CHOICES = ("yes", "no")


def necrosis_choice(value) -> str:
    """'yes' or 'no' for the commands' --necrosis (bools accepted); anything else is refused."""
    text = {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else str(value)
    if text not in NECROSIS_CHOICES:
        raise SynBTError(f"necrosis must be 'yes' or 'no' (or left to the seed), got {value!r}")
    return text


def parse_progress_line(line: str) -> ProgressEvent | None:
    """A progress/done event from one stdout line; None for any other line (warnings, prints)."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("event") not in ("progress", "done"):
        return None
    return ProgressEvent(
        event=data["event"],
        done=int(data.get("done", 0)),
        total=int(data.get("total", 100)),
        message=str(data.get("message", "")),
        out=data.get("out"),
    )


def read_worker_outputs(out_dir: str | Path, source: Case) -> tuple[Case, np.ndarray]:
    """The synthesized case and its tumor mask, on the exact grid of `source` (checked, not trusted)."""
    from .io import phase_paths as output_paths, read_case, read_mask

    out_dir = Path(out_dir)
    phase_paths = output_paths(out_dir, source.num_phases, WORKER_FORMAT)
    missing = [p.name for p in phase_paths + [out_dir / OUTPUT_LABEL_FILE] if not p.exists()]
    if missing:
        raise SynBTError(f"the worker did not write {', '.join(missing)} in {out_dir}")
    result = read_case(phase_paths)
    if not result.geometry.matches(source.geometry):
        raise SynBTError(f"the worker's output grid {result.geometry.describe()} is not the input's {source.geometry.describe()}")
    mask = read_mask(out_dir / OUTPUT_LABEL_FILE, source.geometry)
    return Case(result.phases, source.geometry, list(source.phase_names)), mask


def worker_environment() -> dict:
    """The environment for the worker: this SynBTLib first on the path (it ships inside the module folder)."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    """A running command in its own process group. Threads read its output: JSON progress lines
    become events (poll()), every other line goes to the log (read_log()); poll from a GUI timer."""

    def __init__(self, command: list[str], env: dict | None = None):
        self.command = command
        self._events: queue.Queue = queue.Queue()
        self._log: deque = deque(maxlen=LOG_LINES_KEPT)
        self._stderr: deque = deque(maxlen=50)
        # A process group of its own, so Stop reaches the DataLoader workers of train-seg too.
        # On Windows, no console window per job either (what slicer.util.launchConsoleProcess does).
        if os.name == "posix":
            group = {"start_new_session": True}
        else:
            group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, errors="replace",
            env=env if env is not None else worker_environment(), **group,
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.cancelled = False

    def _read_stdout(self) -> None:
        for line in self.process.stdout:  # text mode: tqdm's "\r" ends a line too
            event = parse_progress_line(line)
            if event is not None:
                self._events.put(event)
            elif line.strip():
                self._log.append(line.rstrip())

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())
                self._log.append(line.rstrip())

    def poll(self) -> list[ProgressEvent]:
        """Progress events received since the last call (never blocks)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def read_log(self) -> list[str]:
        """Output lines (stdout and stderr, progress events excluded) received since the last call."""
        lines = []
        while self._log:
            lines.append(self._log.popleft())
        return lines

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def finish(self, timeout: float | None = None) -> int:
        """Wait for the process and its readers; returns the exit code."""
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def error_message(self, ignore=None) -> str:
        """The worker's one-line error (its last stderr line not ignored), or a generic line."""
        for line in reversed(self._stderr):
            if ignore is None or not ignore(line):
                return line
        return f"the worker stopped with exit code {self.returncode}"

    def interrupt(self) -> None:
        """Ask the worker to stop like Ctrl+C (KeyboardInterrupt: its cleanup code runs); POSIX only,
        elsewhere the process group is killed."""
        if os.name != "posix":
            self.kill()
        elif self.running:
            self._signal_group(signal.SIGINT)

    def kill(self) -> None:
        """Kill the worker's whole process group at once (children such as DataLoader workers included)."""
        if not self.running:
            return
        if os.name == "posix":
            self._signal_group(signal.SIGKILL)
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
            if self.running:
                self.process.kill()

    def _signal_group(self, signum: int) -> None:
        # Only while the worker itself is unreaped: its pid, the group's id, cannot belong to anyone else.
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def cancel(self) -> None:
        """Kill the worker (nothing it wrote is loaded)."""
        self.cancelled = True
        self.kill()
        self.finish(timeout=30)


class SynthesisJob:
    """One synthesis in a worker process: start() writes the inputs and launches it; poll() from a
    GUI timer; result() loads the outputs once it has finished; cancel() kills it. The temporary
    folder is removed in every case."""

    def __init__(self, case: Case, worker: WorkerProcess, work_dir: Path):
        self.case = case
        self.worker = worker
        self.work_dir = work_dir
        self.out_dir = work_dir / "output"

    @classmethod
    def start(cls, case: Case, mask: np.ndarray | None, request: SynthesisRequest, python: str | None = None) -> "SynthesisJob":
        if mask is None and request.auto_size_mm is None:
            raise SynBTError("give a tumor mask or an automatic tumor size")
        mask = None if request.auto_size_mm is not None else mask
        worker, work_dir = start_in_work_dir("SynBT-", case, mask, lambda inputs, out: build_synthesize_command(
            python or python_executable(), inputs, out, request))
        return cls(case, worker, work_dir)

    def poll(self) -> list[ProgressEvent]:
        return self.worker.poll()

    @property
    def running(self) -> bool:
        return self.worker.running

    def result(self) -> tuple[Case, np.ndarray]:
        """Wait for the worker, then the synthesized case and mask; a worker error becomes a SynBTError."""
        try:
            if self.worker.finish() != 0:
                raise SynBTError(self.worker.error_message())
            return read_worker_outputs(self.out_dir, self.case)
        finally:
            self.cleanup()

    def cancel(self) -> None:
        try:
            self.worker.cancel()
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


# ---------------------------------------------------------------- export and training jobs

EXPORT_FORMATS = ("nnunet", "monai")
SYNTHETIC_MODES = ("none", "offline", "on-the-fly")
_TQDM_BAR = re.compile(r"\d{1,3}%\|")  # "desc:  40%|####      | 8/20 [...]"


def default_method() -> str:
    """"diffusion" when the shipped model bundle exists and torch is installed, else "handcrafted".
    Imports no torch (the panel calls it when it opens)."""
    from importlib.util import find_spec

    from .paths import default_bundle_path

    if find_spec("torch") is None:
        return "handcrafted"
    return "diffusion" if (default_bundle_path() / "config.json").is_file() else "handcrafted"


@dataclass
class ExportRequest:
    """`synbt export` from the panel: a synthetic data set made from the cases in `source`."""

    source: str
    out: str
    num_cases: int = 10
    format: str = "nnunet"
    method: str = "handcrafted"
    size_mm: tuple[float, float] = (10.0, 30.0)
    seed: int = 0
    bundle: str | None = None
    steps: int | None = None
    kinetics: str | None = None  # curve type for a kinetic bundle, or "source" (synbt export --kinetics)
    necrosis: str | None = None  # "yes" / "no" for a bundle trained with necrotic cores (None: drawn by the seed)


@dataclass
class TrainRequest:
    """`synbt train-seg` from the panel. synthetic: none | offline (synthetic_dir) | on-the-fly."""

    data: str
    out: str
    synthetic: str = "none"
    synthetic_dir: str | None = None
    method: str = "handcrafted"
    ratio: float = 0.5
    epochs: int = 10
    seed: int = 0
    resume: bool = False
    config: str | None = None


def _folder(value, what: str, must_exist: bool = True) -> str:
    text = str(value or "").strip()
    if not text:
        raise SynBTError(f"choose the {what}")
    if must_exist and not Path(text).is_dir():
        raise SynBTError(f"{what} not found: {text}")
    return text


def build_export_command(python: str, request: ExportRequest) -> list[str]:
    """The `export` command line for one request (checked here so the panel can say what is wrong)."""
    source = _folder(request.source, "source data folder")
    out = _folder(request.out, "export output folder", must_exist=False)
    if Path(out).resolve() == Path(source).resolve():
        raise SynBTError("the export output folder must not be the source data folder")
    if request.format not in EXPORT_FORMATS:
        raise SynBTError(f"unknown export format {request.format!r}; choose {' or '.join(EXPORT_FORMATS)}")
    low, high = (float(v) for v in request.size_mm)
    if low > high:
        raise SynBTError(f"the tumor size range {low:g}-{high:g} mm is empty: minimum above maximum")
    diffusion = request.method == "diffusion"  # the panel keeps bundle and steps for it; other methods drop them
    checked = check_request(request.method, request.steps if diffusion else None, request.kinetics, request.necrosis,
                            request.bundle if diffusion else None, source_kinetics=True)
    command = [python, "-m", "SynBTLib", "export", "--source", source, "--out", out,
               "--num-cases", str(int(request.num_cases)), "--format", request.format, "--method", request.method,
               "--size-mm", f"{low:g}", f"{high:g}", "--seed", str(int(request.seed))]
    if request.method == "diffusion":
        if request.bundle:
            command += ["--bundle", str(request.bundle)]
        if request.steps is not None:
            command += ["--steps", str(int(request.steps))]
        if request.kinetics:
            command += ["--kinetics", str(request.kinetics)]
        if checked.necrosis is not None:
            command += ["--necrosis", necrosis_choice(checked.necrosis)]
    return command


def synthetic_cases_folder(folder: str | Path) -> str:
    """The folder train-seg reads synthetic cases from: a MONAI export's cases/ (io.read_dataset does not
    read its datalist.json layout), any other folder (nnU-Net export, case folders) as it is."""
    folder = Path(folder)
    if (folder / "datalist.json").is_file() and (folder / "cases").is_dir():
        return str(folder / "cases")
    return str(folder)


def build_train_command(python: str, request: TrainRequest) -> list[str]:
    """The `train-seg` command line for one request (checked here so the panel can say what is wrong)."""
    data = _folder(request.data, "training data folder")
    out = _folder(request.out, "training output folder", must_exist=False)
    command = [python, "-m", "SynBTLib", "train-seg", "--data", data, "--out", out,
               "--epochs", str(int(request.epochs)), "--seed", str(int(request.seed))]
    if request.config:
        command += ["--config", str(request.config)]
    if request.synthetic == "offline":
        folder = synthetic_cases_folder(_folder(request.synthetic_dir, "synthetic data folder"))
        command += ["--synthetic", "offline", folder]
    elif request.synthetic in ("none", "on-the-fly"):
        command += ["--synthetic", request.synthetic]
    else:
        raise SynBTError(f"unknown synthetic mode {request.synthetic!r}; choose {', '.join(SYNTHETIC_MODES)}")
    if request.synthetic != "none":
        command += ["--ratio", f"{float(request.ratio):g}"]
    if request.synthetic == "on-the-fly":
        command += ["--method", request.method]
    return command + (["--resume"] if request.resume else [])


def check_train_folder(request: TrainRequest) -> None:
    """Refuse, in panel words, a run folder that train-seg would refuse (resume without checkpoint, or
    a fresh run into a used folder)."""
    from .training.common import CHECKPOINT_FILE

    out = Path(request.out)
    if request.resume and not (out / CHECKPOINT_FILE).is_file():
        raise SynBTError(f"nothing to resume: {out} holds no {CHECKPOINT_FILE} (untick Resume for a new run)")
    if not request.resume and out.is_dir() and any(out.iterdir()):
        raise SynBTError(f"training output folder {out} is not empty: tick Resume to continue its run, or choose another")


@dataclass
class JobProgress:
    """How far a CommandJob is: done of total units (total 0 = not known yet) and a one-line message."""

    done: int = 0
    total: int = 0
    message: str = ""

    @property
    def percent(self) -> int:
        return min(100, int(round(100 * self.done / self.total))) if self.total else 0


def export_progress(out: str | Path, num_cases: int) -> JobProgress:
    """Cases done = provenance files in the export folder: export moves a case's provenance file in last,
    so this count is exact whatever the command prints, and a resumed export starts from what is done."""
    from .export import PROVENANCE_DIR

    folder = Path(out) / PROVENANCE_DIR
    done = min(sum(1 for _ in folder.glob("*.json")), num_cases) if folder.is_dir() else 0
    return JobProgress(done, num_cases, f"{done} of {num_cases} cases")


def _last_complete_row(path: Path) -> dict | None:
    """The last fully written row of a CSV file being appended to (None when there is none)."""
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    lines = text.split("\n")[:-1]  # the text after the last newline may be a row being written
    if len(lines) < 2:
        return None
    return next(csv.DictReader([lines[0], lines[-1]]), None)


def train_progress(out: str | Path) -> JobProgress:
    """Steps done = the last step in losses.csv (one row per completed step, truncated on resume) of
    total = training.steps of the run's config.json (written by train-seg once its data is loaded)."""
    from .training.common import LOG_FILE

    out = Path(out)
    try:
        total = int(json.loads((out / "config.json").read_text())["training"]["steps"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return JobProgress(0, 0, "loading the data")
    row = _last_complete_row(out / LOG_FILE)
    done = int(row["step"]) if row and str(row.get("step", "")).isdigit() else 0
    loss = f", loss {row['loss']}" if row and row.get("loss") else ""
    return JobProgress(done, total, f"step {done} of {total}{loss}")


def is_progress_bar(line: str) -> bool:
    """A tqdm bar line (shown as the status, not appended to the log)."""
    return bool(_TQDM_BAR.search(line))


class CommandJob:
    """A long `synbt` command (export, train-seg) in a worker process, for the panel's Export and Train.

    start with CommandJob.export(request) / CommandJob.train(request); from a GUI timer call progress()
    and read_log(); request_stop() interrupts it (Ctrl+C: the command cleans up) and kills its process
    group after STOP_GRACE_S; stop() does the same and waits. Both commands resume by design: Stop loses
    at most the case (export) or the steps since the last checkpoint (train-seg) in progress. When a
    stopped job ends, the temporary files a killed command may leave (TEMP_GLOBS) are removed.
    """

    # Only the exact temporary names SynBT's own writers use, and only in a folder that SynBT's run
    # marker says is a SynBT output: a user's own hidden files are never touched.
    TEMP_GLOBS = {
        "export": (".tmp-*-[0-9]*", ".*.[0-9]*.tmp"),
        "train-seg": ("checkpoint.pt.tmp", ".tmp-????????-*", "model/.tmp-????????-*"),
    }
    RUN_MARKERS = {"export": "export.json", "train-seg": "config.json"}

    def __init__(self, kind: str, command: list[str], out: Path, measure):
        self.kind, self.command, self.out = kind, command, Path(out)
        self._measure = measure
        self.worker = WorkerProcess(command)
        self.bar = ""  # the latest progress bar line the command printed
        self._stop_deadline: float | None = None
        self._cleaned = False

    @classmethod
    def export(cls, request: ExportRequest, python: str | None = None) -> "CommandJob":
        command = build_export_command(python or python_executable(), request)
        num_cases = int(request.num_cases)
        return cls("export", command, Path(request.out), lambda out: export_progress(out, num_cases))

    @classmethod
    def train(cls, request: TrainRequest, python: str | None = None) -> "CommandJob":
        command = build_train_command(python or python_executable(), request)
        check_train_folder(request)
        return cls("train-seg", command, Path(request.out), train_progress)

    @property
    def running(self) -> bool:
        return self.worker.running

    @property
    def stopping(self) -> bool:
        return self._stop_deadline is not None

    @property
    def returncode(self) -> int | None:
        return self.worker.returncode

    def progress(self) -> JobProgress:
        """Progress read from the output folder; also kills a stopping job past its grace time."""
        if self._stop_deadline is not None and self.running and time.monotonic() > self._stop_deadline:
            self.worker.kill()
        if not self.running:
            self._after_exit()
        return self._measure(self.out)

    def read_log(self) -> list[str]:
        """New output lines; tqdm bars are kept apart in `bar` so they do not flood the log."""
        lines = []
        for line in self.worker.read_log():
            if is_progress_bar(line):
                self.bar = line.strip()
            else:
                lines.append(line)
        return lines

    def request_stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Interrupt the command now and kill it once grace_s have passed (checked by progress())."""
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + grace_s
            self.worker.cancelled = True
            self.worker.interrupt()

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """Interrupt, wait up to grace_s, kill if still running, clean up; returns the exit code."""
        self.request_stop(grace_s)
        try:
            self.worker.finish(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        code = self.worker.finish(timeout=30)
        self._after_exit()
        return code

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command to end; returns its exit code."""
        code = self.worker.finish(timeout)
        self._after_exit()
        return code

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.stopping

    def error_message(self) -> str:
        """The command's one-line error (its last stderr line that is not a progress bar)."""
        return self.worker.error_message(ignore=is_progress_bar)

    def _after_exit(self) -> None:
        if self._cleaned or not self.stopping:
            return
        self._cleaned = True
        if not (self.out / self.RUN_MARKERS[self.kind]).is_file():
            return
        for pattern in self.TEMP_GLOBS[self.kind]:
            for path in self.out.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def auto_tumor_mask(case: Case, size_mm: float, seed: int, center_mm=None) -> np.ndarray:
    """A tumor of diameter size_mm placed in the breast tissue, exactly as `synbt synthesize --auto` does."""
    from .shapes import place_in_breast

    return place_in_breast(case, size_mm, seed=seed, center_mm=center_mm).mask


# ---------------------------------------------------------------- applying a trained segmentation model

SEGMENT_CASE_ID = "case"


def build_segment_command(python: str, inputs: WorkerInputs, model: str | Path, out_dir: str | Path) -> list[str]:
    """The `segment` command line that writes out_dir/case.nii.gz for the phases in `inputs`."""
    return [python, "-m", "SynBTLib", "segment", "--model", check_model_folder(model), "--phases",
            *map(str, inputs.phase_paths), "--name", SEGMENT_CASE_ID, "--out", str(out_dir)]


def check_model_folder(model: str | Path | None) -> str:
    """The chosen model folder as text, refused when empty or missing."""
    model_text = str(model or "").strip()
    if not model_text:
        raise SynBTError("choose the trained model folder (a `synbt train-seg` run folder)")
    if not Path(model_text).is_dir():
        raise SynBTError(f"model folder not found: {model_text}")
    return model_text


class SegmentationJob:
    """`synbt segment` on one case in a worker process: start() writes the phases and launches it; from a
    GUI timer check `running`; result() reads the tumor mask on the case's grid; cancel() kills it. The
    temporary folder is removed in every case."""

    def __init__(self, case: Case, worker: WorkerProcess, work_dir: Path):
        self.case, self.worker, self.work_dir = case, worker, work_dir
        self.out_dir = work_dir / "output"

    @classmethod
    def start(cls, case: Case, model: str | Path, python: str | None = None) -> "SegmentationJob":
        check_model_folder(model)  # before the phases are written: a wrong folder costs nothing
        worker, work_dir = start_in_work_dir("SynBT-segment-", case, None, lambda inputs, out: build_segment_command(
            python or python_executable(), inputs, model, out))
        return cls(case, worker, work_dir)

    @property
    def running(self) -> bool:
        return self.worker.running

    def read_log(self) -> list[str]:
        return self.worker.read_log()

    def result(self) -> np.ndarray:
        """The predicted tumor mask (uint8, the case's grid); a worker error becomes a SynBTError."""
        from .io import read_image

        try:
            if self.worker.finish() != 0:
                raise SynBTError(self.worker.error_message(ignore=is_progress_bar))
            path = self.out_dir / f"{SEGMENT_CASE_ID}.nii.gz"
            if not path.is_file():
                raise SynBTError(f"the worker did not write {path.name}")
            values, geometry = read_image(path)
            if not geometry.matches(self.case.geometry):
                raise SynBTError(f"the worker's label grid {geometry.describe()} is not the input's {self.case.geometry.describe()}")
            return (values > 0).astype(np.uint8)  # may be empty: the model found no tumor
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def cancel(self) -> None:
        try:
            self.worker.cancel()
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)
