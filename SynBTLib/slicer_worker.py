"""The Slicer module's worker process, without Qt: inputs, command line, progress lines, outputs.

The module writes the phases (and the tumor mask) as temporary NIfTI files, runs
``PythonSlicer -m SynBTLib synthesize ... --progress json`` in a separate process, shows the JSON
progress lines, and loads the outputs back. Everything here runs (and is tested) outside Slicer.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .case import Case
from .errors import SynBTError

MASK_FILE = "tumor_mask.nii.gz"
OUTPUT_LABEL_FILE = "tumor_labels.nii.gz"


@dataclass
class SynthesisRequest:
    """What to synthesize: a method and its options. auto_size_mm set = place a tumor automatically."""

    method: str = "handcrafted"
    seed: int = 0
    steps: int | None = None
    bundle: str | None = None
    auto_size_mm: float | None = None
    center_mm: tuple[float, float, float] | None = None  # LPS, with auto_size_mm


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
        return int(round(100 * self.done / self.total)) if self.total else 0


def write_worker_inputs(case: Case, mask: np.ndarray | None, work_dir: str | Path) -> WorkerInputs:
    """Write the phases (phase_<k>.nii.gz) and the mask, if any, into work_dir/input."""
    from .io import write_case, write_label

    input_dir = Path(work_dir) / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    phase_paths = [Path(p) for p in write_case(case, input_dir)]
    mask_path = None if mask is None else Path(write_label(mask, case.geometry, input_dir / MASK_FILE))
    return WorkerInputs(phase_paths, mask_path)


def python_executable() -> str:
    """Slicer's Python launcher when there is one (it sets up Slicer's libraries), else this Python."""
    return shutil.which("PythonSlicer") or sys.executable


def build_synthesize_command(python: str, inputs: WorkerInputs, out_dir: str | Path, request: SynthesisRequest) -> list[str]:
    """The `synthesize` command line for one request, with JSON progress on stdout."""
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
    return command + ["--out", str(out_dir), "--progress", "json"]


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
    from .io import read_case, read_mask

    out_dir = Path(out_dir)
    phase_paths = [out_dir / f"phase_{k}.nii.gz" for k in range(source.num_phases)]
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
    """A running command whose stdout progress lines are read by a thread; poll() from a GUI timer."""

    def __init__(self, command: list[str], env: dict | None = None):
        self.command = command
        self._events: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            env=env if env is not None else worker_environment(),
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.cancelled = False

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            event = parse_progress_line(line)
            if event is not None:
                self._events.put(event)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())

    def poll(self) -> list[ProgressEvent]:
        """Progress events received since the last call (never blocks)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

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

    def error_message(self) -> str:
        """The worker's one-line error (its last stderr line), or a generic line."""
        return self._stderr[-1] if self._stderr else f"the worker stopped with exit code {self.returncode}"

    def cancel(self) -> None:
        """Kill the worker (nothing it wrote is loaded)."""
        self.cancelled = True
        if self.running:
            self.process.kill()
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
        work_dir = Path(tempfile.mkdtemp(prefix="SynBT-"))
        try:
            inputs = write_worker_inputs(case, None if request.auto_size_mm is not None else mask, work_dir)
            command = build_synthesize_command(python or python_executable(), inputs, work_dir / "output", request)
            worker = WorkerProcess(command)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
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


def auto_tumor_mask(case: Case, size_mm: float, seed: int, center_mm=None) -> np.ndarray:
    """A tumor of diameter size_mm placed in the breast tissue (as `synbt synthesize --auto` does)."""
    from .preprocess import breast_tissue_mask
    from .shapes import place_tumor

    allowed = breast_tissue_mask(case).breast
    return place_tumor(allowed, case.geometry, size_mm, seed=seed, center_mm=center_mm).mask


TORCH_VERSION = "2.13.0"
# import name -> pip requirement; torch is installed through Slicer's PyTorch extension instead.
PIP_REQUIREMENTS = {
    "monai": "monai==1.6.1",
    "einops": "einops>=0.7",
    "safetensors": "safetensors>=0.4",
    "tqdm": "tqdm>=4.66",
    "scipy": "scipy>=1.11",
    "SimpleITK": "SimpleITK>=2.4,<2.6",
    "matplotlib": "matplotlib>=3.8",
}


def missing_modules() -> list[str]:
    """Import names of the engine's dependencies that this Python cannot import ("torch" first)."""
    from importlib.util import find_spec

    return [name for name in ["torch", *PIP_REQUIREMENTS] if find_spec(name) is None]
