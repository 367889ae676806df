"""Several SynBT trainings at once on one machine (one GPU, or CPU), all stopped by one deadline.

    python bench/train_campaign.py JOBS.json --out DIR --runs RUNDIR [--end-at EPOCH_SECONDS] [--stop-file PATH]

For a lent GPU with a hard time limit: tiny networks leave most of an H100 idle, so several runs
share it. JOBS.json is a list of {"name", "kind": "ae"|"diffusion", "data", "config": {...},
"autoencoder": bundle or run (diffusion only), "latent_cache": folder (diffusion only, optional: a
resume after the deadline then skips the encoding), "command": text for the model card}. Each job runs
in its own process with 3 threads; its run folder is RUNDIR/name and DIR/name.tar gets its bundle,
losses.csv, config.json and log. A job still training when the deadline nears stops at its last
checkpoint and is resumed with steps = that checkpoint, so it still writes a bundle (with the
learning rate not fully annealed: the log says so). The stop comes early by the job's own setup
time (loading, and encoding for diffusion), since the resume repeats it. Creating the --stop-file
stops every job still training the same way at once (a campaign ended by hand, or by a test).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
import traceback
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Deadline(Exception):
    pass


def run_job(job: dict, out: str, runs: str, end_at: float, stop_file: str | None = None) -> None:
    os.environ["OMP_NUM_THREADS"] = "3"
    import torch

    from SynBTLib.training.autoencoder import train_autoencoder
    from SynBTLib.training.common import CHECKPOINT_FILE, read_checkpoint
    from SynBTLib.training.diffusion import train_diffusion

    torch.set_num_threads(3)
    start = time.time()
    run_dir, log_path = Path(runs) / job["name"], Path(runs) / f"{job['name']}.log"
    log = log_path.open("w")
    setup: list[float] = []

    def progress(done: int, total: int, message: str) -> None:
        if not setup:
            setup.append(time.time() - start)
        if done in (100, 1000) or done % 2000 == 0 or done == total:
            print(f"{job['name']} step {done}/{total} at {time.time() - start:.0f}s", file=log, flush=True)
        if time.time() > end_at - setup[0] - 10 or (stop_file is not None and os.path.exists(stop_file)):
            raise Deadline(done)

    def train(config: dict, resume: bool = False, progress_fn=None):
        common = dict(resume=resume, verbose=False, progress=progress_fn, command=job.get("command", ""))
        if job["kind"] == "ae":
            return train_autoencoder(job["data"], run_dir, config, **common)
        return train_diffusion(job["data"], job["autoencoder"], run_dir, config, latent_cache=job.get("latent_cache"),
                               **common)

    try:
        run = train(job["config"], progress_fn=progress)
        status = "complete"
    except Deadline as stop:
        if (run_dir / CHECKPOINT_FILE).is_file():
            step = read_checkpoint(run_dir / CHECKPOINT_FILE)["step"]
            status = f"deadline at step {stop.args[0]}; bundle from the checkpoint at step {step} (LR not annealed)"
            config = json.loads(json.dumps(job["config"]))
            config.setdefault("training", {})["steps"] = step
            run = train(config, resume=True)
        else:
            status, run = f"deadline at step {stop.args[0]}, before the first checkpoint: no bundle", None
    except Exception:
        traceback.print_exc(file=log)
        status, run = "failed", None
    setup_s = f"{setup[0]:.0f}s" if setup else "-"
    print(f"{job['name']}: {status}; setup {setup_s}; total {time.time() - start:.0f}s; "
          f"last losses {getattr(run, 'losses', None)}", file=log, flush=True)
    log.close()
    with tarfile.open(Path(out) / f"{job['name']}.tar", "w") as tar:
        for name in ("bundle", "losses.csv", "config.json"):
            if (run_dir / name).exists():
                tar.add(run_dir / name, arcname=f"{job['name']}/{name}")
        tar.add(log_path, arcname=f"{job['name']}/train.log")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", help="JSON list of jobs")
    parser.add_argument("--out", required=True, help="folder for one NAME.tar per job")
    parser.add_argument("--runs", required=True, help="folder for the run folders and logs")
    parser.add_argument("--end-at", type=float, default=float("inf"), help="deadline, seconds since the epoch")
    parser.add_argument("--stop-file", help="when this file exists, every job still training stops as at the deadline")
    args = parser.parse_args(argv)
    jobs = json.loads(Path(args.jobs).read_text())
    names = [job["name"] for job in jobs]
    if len(set(names)) != len(names):
        raise SystemExit(f"job names must be unique: {names}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    ctx = get_context("spawn")
    procs = [ctx.Process(target=run_job, args=(job, args.out, args.runs, args.end_at, args.stop_file)) for job in jobs]
    for proc in procs:
        proc.start()
    for proc, name in zip(procs, names):
        proc.join(None if args.end_at == float("inf") else max(args.end_at + 30 - time.time(), 1))
        if proc.is_alive():
            print(f"{name}: still running 30 s past the deadline: terminated", flush=True)
            proc.terminate()
    for name in names:
        log = Path(args.runs) / f"{name}.log"
        lines = log.read_text().strip().splitlines() if log.is_file() else []
        print(lines[-1] if lines else f"{name}: no log", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
