"""Far-FP / lesion Dice of the cpu preset's synthetic arms with the new sampling (synthetic patches drawn
like real ones), on the existing cpu cohort and synthetic sets (read only); units cached (resumable)."""
import sys, time
from pathlib import Path
from SynBTLib.experiment import StudyPlan, run_unit

SRC = Path("/tmp/study_cpu")
OUT = Path("/tmp/seg_fp/runs")
plan = StudyPlan.preset_plan("cpu")
dirs = {"train": SRC / "cohort/train", "val": SRC / "cohort/val", "test": SRC / "cohort/test"}
units = [u.split(":") for u in sys.argv[1:]]  # arm:seed:pos   (pos: 'as_real' or a number)
for arm, seed, pos in units:
    method = {"handcrafted": "handcrafted", "offline": "diffusion"}[arm]
    pos_fraction = None if pos == "as_real" else float(pos)
    synthetic = {"mode": "offline", "dir": str(SRC / "synthetic" / f"train_{method}"), "ratio": plan.ratio,
                 "pos_fraction": pos_fraction}
    t = time.time()
    m = run_unit(plan, arm, int(seed), dirs, synthetic, OUT / f"{arm}_{pos}" / f"seed_{seed}")
    dice = sum(r["dice"] for r in m["lesions"]) / len(m["lesions"])
    fp = sum(c["fp_ml"] for c in m["cases"]) / len(m["cases"])
    print(f"{arm} pos={pos} seed {seed}: lesion Dice {dice:.3f}, far FP {fp:.2f} mL, best step {m['best_step']}, "
          f"{(time.time() - t) / 60:.1f} min", flush=True)
