"""Issue 29 point 4: a killed `synbt train-seg` takes its DataLoader workers with it (no orphans)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from SynBTLib.phantom import make_phantom, write_phantom
from test_train_seg import TINY

ROOT = Path(__file__).resolve().parents[1]


def children_of(pid: int) -> set[int]:
    """Process ids whose parent is pid (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_train_seg_leaves_no_worker_behind(tmp_path):
    data = tmp_path / "data"
    for k in range(2):
        write_phantom(make_phantom(seed=10 + k, shape=(64, 64, 24), tumors=1, tumor_diameters_mm=14.0),
                      data / f"case_{k}", montage=False)
    config = json.loads(json.dumps(TINY))
    config["training"]["epochs"] = 10_000  # runs until killed
    config["synthetic"]["workers"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "SynBTLib", "train-seg", "--data", str(data), "--out", str(tmp_path / "run"),
         "--config", str(tmp_path / "config.json")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while len(workers) < 2 and process.poll() is None and time.monotonic() < deadline:
            workers = children_of(process.pid)
            time.sleep(0.1)
        assert len(workers) >= 2, "train-seg did not start its DataLoader workers"
        time.sleep(1.0)  # the workers are busy synthesizing
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 30  # a bounded wait, not a timing assertion
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in workers if alive(pid)]
        assert survivors == [], f"workers {survivors} outlived the killed train-seg"
    finally:
        if process.poll() is None:
            process.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
