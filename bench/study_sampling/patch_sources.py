"""Where synthetic-stream patch centres fall in the cpu handcrafted synthetic set: background, a source
(real) lesion, or the new synthetic tumor; old (positive_only) vs new (pos_fraction 0.67) sampling.
Replays TumorPatchSampler.sample's draws (same rng calls) to know each patch's case and centre.
Usage: patch_sources.py [SET] (default: the cpu study's handcrafted set); a set exported with synthetic-tumor
masks has its positive centres on them (load_segmentation_cases(..., "synthetic")), one without falls back."""
import json
import sys
from pathlib import Path
import numpy as np
from SynBTLib.io import read_mask
from SynBTLib.training.common import step_rng
from SynBTLib.training.segmentation import load_segmentation_cases

SET = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/study_cpu/synthetic/train_handcrafted")
cases = load_segmentation_cases(SET, "synthetic", progress=False)
new = {}
for c in cases:
    prov = json.loads((SET / "provenance" / f"{c.case_id}.json").read_text())
    new[c.case_id] = (c.tumor > 0) & ~(read_mask(prov["source_label"], c.geometry) > 0)
with_tumor = [c for c in cases if len(c.tumor_voxels)]
half = np.array([16, 48, 48]) // 2
for name, only in (("old (positive_only)", True), ("new (pos_fraction 0.67)", False)):
    tally = dict(background=0, source_lesion=0, synthetic_tumor=0, patch_holds_synthetic=0, patch_holds_source=0,
                 patch_tumor_free=0)
    n = 0
    for step in range(500):
        rng = step_rng(0, step, 0, 2)
        for _ in range(2):
            positive = only or rng.random() < 0.67
            if positive:
                case = with_tumor[rng.integers(len(with_tumor))]
                centre = case.tumor_voxels[rng.integers(len(case.tumor_voxels))]
            else:
                case = cases[rng.integers(len(cases))]
                centre = case.body_voxels[rng.integers(len(case.body_voxels))]
            rng.random()  # the flip draw
            z, y, x = (int(v) for v in centre)
            box = tuple(slice(max(0, v - h), v + h) for v, h in zip(centre, half))
            n += 1
            if new[case.case_id][z, y, x]:
                tally["synthetic_tumor"] += 1
            elif case.tumor[z, y, x]:
                tally["source_lesion"] += 1
            else:
                tally["background"] += 1
            tally["patch_holds_synthetic"] += bool(new[case.case_id][box].any())
            tally["patch_holds_source"] += bool((case.tumor[box] & ~new[case.case_id][box]).any())
            tally["patch_tumor_free"] += not case.tumor[box].any()
    print(name, {k: round(v / n, 3) for k, v in tally.items()}, "patches:", n)
