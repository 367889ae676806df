"""The panel's Export and Train jobs without Slicer: command lines, progress read from the files the
commands write, and real `python -m SynBTLib export` / `train-seg` processes run and stopped."""
import json
import math
import sys
import time
from pathlib import Path

import pytest

from SynBTLib import slicer_worker as sw
from SynBTLib.errors import SynBTError

# A segmentation network small enough to train at ~100 steps/s on one CPU thread.
TINY_SEG_CONFIG = {
    "model": {"channels": [4, 8], "num_res_units": 0, "subtraction": False},
    "training": {"batch_size": 1, "warmup_steps": 0, "checkpoint_every": 2},
    "data": {"patch_size": [8, 16, 16], "steps_per_epoch": 2},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two tiny phantom case folders (48 x 48 x 20 voxels, 3 phases)."""
    from SynBTLib.phantom import make_phantom, write_phantom

    root = tmp_path_factory.mktemp("phantoms")
    for k in range(2):
        write_phantom(make_phantom(seed=k, shape=(48, 48, 20)), root / f"case_{k}", montage=False)
    return root


def value_after(command, flag, count=1):
    i = command.index(flag)
    return command[i + 1:i + 1 + count] if count > 1 else command[i + 1]


def wait_until(condition, job, timeout=120.0):
    """Poll like the panel's timer does until condition(progress) holds or the job ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = job.progress()
        if condition(progress) or not job.running:
            return progress
        time.sleep(0.05)
    raise AssertionError(f"{job.kind} did not get there in {timeout} s")


# ------------------------------------------------------------------------------ command lines


def test_export_command_line(tmp_path):
    request = sw.ExportRequest(source=str(tmp_path), out=str(tmp_path / "out"), num_cases=7, format="monai",
                               method="handcrafted", size_mm=(8, 12.5), seed=3, bundle="ignored", steps=9)
    command = sw.build_export_command("py", request)
    assert command[:4] == ["py", "-m", "SynBTLib", "export"]
    assert value_after(command, "--source") == str(tmp_path) and value_after(command, "--out") == str(tmp_path / "out")
    assert value_after(command, "--num-cases") == "7" and value_after(command, "--format") == "monai"
    assert value_after(command, "--size-mm", 2) == ["8", "12.5"] and value_after(command, "--seed") == "3"
    assert "--bundle" not in command and "--steps" not in command  # handcrafted ignores them
    diffusion = sw.build_export_command("py", sw.ExportRequest(str(tmp_path), "o", method="diffusion", bundle="b", steps=9,
                                                                kinetics="source", necrosis="no"))
    assert value_after(diffusion, "--bundle") == "b" and value_after(diffusion, "--steps") == "9"
    assert value_after(diffusion, "--kinetics") == "source" and "--kinetics" not in command
    assert value_after(diffusion, "--necrosis") == "no" and "--necrosis" not in command


@pytest.mark.parametrize("change, problem", [
    ({"source": ""}, "choose the source data folder"),
    ({"source": "/no/such/folder"}, "source data folder not found"),
    ({"out": " "}, "choose the export output folder"),
    ({"out": "SAME"}, "must not be the source"),
    ({"format": "dicom"}, "unknown export format"),
    ({"size_mm": (20, 10)}, "minimum above maximum"),
])
def test_export_request_problems_are_one_line(tmp_path, change, problem):
    fields = {"source": str(tmp_path), "out": str(tmp_path / "out"), **change}
    fields["out"] = str(tmp_path) if fields["out"] == "SAME" else fields["out"]
    with pytest.raises(SynBTError, match=problem):
        sw.build_export_command("py", sw.ExportRequest(**fields))


def test_train_command_line_for_each_synthetic_mode(tmp_path):
    base = dict(data=str(tmp_path), out=str(tmp_path / "run"), epochs=4, seed=2, ratio=0.25, method="diffusion")
    none = sw.build_train_command("py", sw.TrainRequest(**base))
    assert none[:4] == ["py", "-m", "SynBTLib", "train-seg"]
    assert value_after(none, "--epochs") == "4" and value_after(none, "--seed") == "2"
    assert value_after(none, "--synthetic") == "none" and "--ratio" not in none and "--method" not in none
    assert "--resume" not in none and "--config" not in none
    offline = sw.build_train_command("py", sw.TrainRequest(**base, synthetic="offline", synthetic_dir=str(tmp_path)))
    assert value_after(offline, "--synthetic", 2) == ["offline", str(tmp_path)]
    assert value_after(offline, "--ratio") == "0.25" and "--method" not in offline
    fly = sw.build_train_command("py", sw.TrainRequest(**base, synthetic="on-the-fly", resume=True, config="c.json"))
    assert value_after(fly, "--synthetic") == "on-the-fly" and value_after(fly, "--method") == "diffusion"
    assert fly[-1] == "--resume" and value_after(fly, "--config") == "c.json"
    monai_export = tmp_path / "monai"
    (monai_export / "cases").mkdir(parents=True)
    (monai_export / "datalist.json").write_text("{}")
    offline = sw.build_train_command("py", sw.TrainRequest(**base, synthetic="offline", synthetic_dir=str(monai_export)))
    assert value_after(offline, "--synthetic", 2) == ["offline", str(monai_export / "cases")]
    with pytest.raises(SynBTError, match="choose the synthetic data folder"):
        sw.build_train_command("py", sw.TrainRequest(**base, synthetic="offline"))
    with pytest.raises(SynBTError, match="unknown synthetic mode"):
        sw.build_train_command("py", sw.TrainRequest(**base, synthetic="sometimes"))
    with pytest.raises(SynBTError, match="training data folder not found"):
        sw.build_train_command("py", sw.TrainRequest(data=str(tmp_path / "nope"), out="o"))


def test_train_folder_checks_speak_of_the_resume_option(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SynBTError, match="nothing to resume"):
        sw.check_train_folder(sw.TrainRequest(str(tmp_path), str(run), resume=True))
    sw.check_train_folder(sw.TrainRequest(str(tmp_path), str(run)))  # a new folder is fine
    run.mkdir()
    (run / "losses.csv").write_text("step,loss\n")
    with pytest.raises(SynBTError, match="tick Resume"):
        sw.check_train_folder(sw.TrainRequest(str(tmp_path), str(run)))


# ------------------------------------------------------------------------------------- progress


def test_export_progress_counts_provenance_files(tmp_path):
    assert sw.export_progress(tmp_path, 4).done == 0
    (tmp_path / "provenance").mkdir()
    for name in ("SynBT_000.json", "SynBT_002.json", ".SynBT_003.json.1.tmp"):
        (tmp_path / "provenance" / name).write_text("{}")
    progress = sw.export_progress(tmp_path, 4)
    assert (progress.done, progress.total, progress.percent, progress.message) == (2, 4, 50, "2 of 4 cases")


def test_train_progress_reads_the_last_complete_loss_row(tmp_path):
    assert (sw.train_progress(tmp_path).total, sw.train_progress(tmp_path).percent) == (0, 0)  # not started
    (tmp_path / "config.json").write_text(json.dumps({"training": {"steps": 8}}))
    assert sw.train_progress(tmp_path).done == 0
    (tmp_path / "losses.csv").write_text("step,loss,synthetic,lr,val_dice\n1,0.9,0,0.001,\n2,0.8,0,0.001,\n3,0.7")
    progress = sw.train_progress(tmp_path)  # row 3 is still being written
    assert (progress.done, progress.total, progress.percent) == (2, 8, 25)
    assert progress.message == "step 2 of 8, loss 0.8"


def test_progress_bars_are_kept_out_of_the_log():
    assert sw.is_progress_bar("train-seg:  40%|####      | 8/20 [00:01<00:02, 7.9it/s, loss=0.5]")
    assert not sw.is_progress_bar("exported 2 new case(s), 0 already done, into out")
    assert not sw.is_progress_bar("synbt train-seg: error: output folder x is not empty")


# ------------------------------------------------------------------------------ real processes


def test_export_job_runs_the_real_command_and_reaches_the_total(source, tmp_path):
    out = tmp_path / "export"
    request = sw.ExportRequest(str(source), str(out), num_cases=2, format="monai", method="handcrafted",
                               size_mm=(8, 12), seed=0)
    job = sw.CommandJob.export(request, python=sys.executable)
    seen, log = [], []
    while job.running:
        seen.append(job.progress().done)
        log += job.read_log()
        time.sleep(0.05)
    assert job.wait() == 0 and job.succeeded
    log += job.read_log()
    final = job.progress()
    assert (final.done, final.total, final.percent) == (2, 2, 100)
    assert seen == sorted(seen) and max(seen, default=0) <= 2
    assert any("exported 2 new case(s)" in line for line in log)
    datalist = json.loads((out / "datalist.json").read_text())
    assert [item["case"] for item in datalist["training"]] == ["SynBT_000", "SynBT_001"]
    for item in datalist["training"]:
        assert all((out / path).is_file() for path in item["image"] + [item["label"]])
    # Exporting again into the finished folder is a no-op resume that starts at the total.
    again = sw.CommandJob.export(request, python=sys.executable)
    assert again.progress().done == 2 and again.wait() == 0
    assert any("0 new case(s), 2 already done" in line for line in again.read_log())


def test_a_failing_command_reports_its_error_line_not_its_progress_bar(tmp_path):
    script = ("import sys; sys.stderr.write('synbt train-seg: error: boom\\n'); "
              "sys.stderr.write('train-seg:  50%|#    | 1/2\\r'); print('a log line'); sys.exit(2)")
    job = sw.CommandJob("train-seg", [sys.executable, "-c", script], tmp_path, sw.train_progress)
    assert job.wait(timeout=60) == 2 and not job.succeeded
    assert job.error_message() == "synbt train-seg: error: boom"
    assert sorted(job.read_log()) == ["a log line", "synbt train-seg: error: boom"]
    assert job.bar == "train-seg:  50%|#    | 1/2"


def test_stopping_train_seg_kills_it_and_the_run_resumes(source, tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_SEG_CONFIG))
    run = tmp_path / "run"
    request = sw.TrainRequest(str(source), str(run), epochs=5000, seed=0, config=str(config))
    job = sw.CommandJob.train(request, python=sys.executable)
    progress = wait_until(lambda p: p.done >= 6, job)
    assert job.running and progress.total == 10000 and 6 <= progress.done < 10000
    job.stop()
    assert not job.running and job.returncode != 0 and not job.succeeded
    job.read_log()
    assert job.bar.startswith("train-seg:")  # tqdm's bar came through, kept out of the log
    assert not list(run.rglob("*.tmp")) and (run / "checkpoint.pt").is_file()
    stopped_at = sw.train_progress(run).done

    # The same folder, Resume ticked, with a total just past where it stopped.
    epochs = math.ceil((stopped_at + 2) / TINY_SEG_CONFIG["data"]["steps_per_epoch"])
    resumed = sw.CommandJob.train(
        sw.TrainRequest(str(source), str(run), epochs=epochs, seed=0, config=str(config), resume=True),
        python=sys.executable,
    )
    assert resumed.wait(timeout=120) == 0, resumed.error_message()
    final = resumed.progress()
    assert final.total == 2 * epochs and final.done == final.total and final.percent == 100
    assert (run / "model" / "model.safetensors").is_file()
    rows = (run / "losses.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, final.total + 1))  # one row per step, no gap
