#!/usr/bin/env bash
# The segmentation study at the paper preset, on a GPU machine (see docs/experiments.md).
#
#   bash bench/study_paper.sh [OUT]        # OUT defaults to $OUT/study_paper, else runs/study_paper
#
# 7 arms x 8 seeds of a 5-level MONAI UNet (32..320 channels, patches 32x96x96, 6,000 steps of 8),
# 160 test lesions in 80 phantom cases at the bundle's grid (192x192x64). Resumable: run it again
# after an interruption and finished (arm, seed) units are kept. Phase 1 runs every arm but the
# on-the-fly one (those synthesize offline, once); phase 2 the on-the-fly arm, whose synthesis runs in
# CPU DataLoader workers (training/segmentation.py builds the synthesizer on the CPU): 24,000 SynBT
# tumors per unit, so phase 2 costs hours per seed and is worth starting only where phase 1 is done.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
DEST=${1:-${OUT:-runs}/study_paper}
mkdir -p "$(dirname "$DEST")"
"$PY" - <<'EOF'
import torch, monai
print(f"torch {torch.__version__}, monai {monai.__version__}, cuda {torch.cuda.is_available()}",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
"$PY" -m SynBTLib experiment --preset paper --out "$DEST" --device cuda \
    --arms real handcrafted offline gap_real gap_handcrafted gap_offline
"$PY" -m SynBTLib experiment --preset paper --out "$DEST" --device cuda \
    --arms real handcrafted offline onthefly gap_real gap_handcrafted gap_offline
echo "results: $DEST/results/summary.md"
