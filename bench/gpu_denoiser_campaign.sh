#!/usr/bin/env bash
# Denoiser trainings on a lent GPU (the device tool), as run on 2026-11-27; results in bench/results/gpu_denoiser/.
#
#   bash bench/gpu_denoiser_campaign.sh OUTDIR [BUDGET_S]      (SMALL=1: a minutes-long CPU rehearsal)
#   WORK=/tmp/synbt_gpu.X bash ...   reuses that folder's cohorts and latent cache (a second call on a warm machine)
#   N_NEW=40 bash ...                fewer new cases (making one took ~28 s per worker on the H200 machine)
#
# The device machine has torch but not SimpleITK, MONAI or nibabel: they travel in .whl/ (SimpleITK
# repacked as sitk.tar.xz to fit the 64 MiB the working tree may carry). It makes the training
# cohorts there (the 60 cases of cohort_diff, the same seeds as the README, plus 100 new cases) and
# runs two jobs at once with bench/train_campaign.py under one deadline, BUDGET_S after the start:
#   ft:   the shipped denoiser continued (curve types + necrotic cores), batch 32
#   wide: a 48/96/96 denoiser from scratch, same conditions, batch 32
# Each bundle comes back as OUTDIR/NAME.tar (split in 15 MB parts: the device returns files <= 16 MB).
set -euo pipefail
shopt -s nullglob
out=${1:?OUTDIR}
budget=${2:-460}
start=$(date +%s)
small=${SMALL:-0}
here=$(pwd)
mkdir -p "$out"
work=${WORK:-$(mktemp -d /tmp/synbt_gpu.XXXX)}
mkdir -p "$work"

if [ -f .whl/sitk.tar.xz ] && ! python3 -c "import SimpleITK" 2>/dev/null; then
  mkdir -p /tmp/site
  tar xJf .whl/sitk.tar.xz -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$here" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
$py -c "import torch, monai, SimpleITK; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true

if [ "$small" = 1 ]; then n1=2; n3=2; n5=8; shape="128 128 48"; steps=4; workers=2; else
  n1=24; n3=40; n5=${N_NEW:-100}; shape="192 192 64"; steps=4000; workers=16; fi
if [ -d "$work/diff" ]; then echo "reusing the cohorts in $work/diff"; else
$py -m SynBTLib phantom-cohort --out "$work/c1" --n $n1 --seed 100 --shape $shape --workers $workers
$py -m SynBTLib phantom-cohort --out "$work/c3" --n $n3 --seed 2000 --max-tumors 4 --shape $shape --workers $workers
$py -m SynBTLib phantom-cohort --out "$work/c5" --n $n5 --seed 6000 --max-tumors 4 --shape $shape --workers $workers
mkdir -p "$work/diff"
for d in "$work"/c1/case_0*; do
  k=${d##*_}; [ "$small" = 1 ] || [ "$k" -lt 20 ] || continue  # case_020..023 are the autoencoder's held-out cases
  ln -s "$d" "$work/diff/c2_${d##*/}"
done
for d in "$work"/c3/case_*; do ln -s "$d" "$work/diff/c3_${d##*/}"; done
for d in "$work"/c5/case_*; do ln -s "$d" "$work/diff/c5_${d##*/}"; done
fi
echo "cohorts ready at $(( $(date +%s) - start )) s: $(ls "$work/diff" | wc -l) cases"

$py - "$work" "$steps" <<'EOF'
import json, sys
work, steps = sys.argv[1], int(sys.argv[2])
ft = json.load(open("configs/phantom_diffusion_necrosis.json"))
ft["finetune"] = {"bundle": "SynBTLib/bundles/phantom"}
ft["training"].update(steps=steps, batch_size=32, lr=1e-4, warmup_steps=100, checkpoint_every=250)
wide = json.load(open("configs/phantom_diffusion_linear.json"))
wide["denoiser"]["channels"] = [48, 96, 96]
wide["necrosis_conditioning"] = True
wide["training"].update(steps=steps, batch_size=32, lr=2e-4, warmup_steps=200, checkpoint_every=250)
data = f"{work}/diff"
jobs = [{"name": name, "kind": "diffusion", "data": data, "autoencoder": "SynBTLib/bundles/phantom", "config": cfg,
         "latent_cache": f"{work}/latent_cache",
         "command": f"bench/gpu_denoiser_campaign.sh job {name} (GPU; cohorts as in the script): config {json.dumps(cfg)}"}
        for name, cfg in (("ft", ft), ("wide", wide))]
json.dump(jobs, open(f"{work}/jobs.json", "w"), indent=1)
EOF
cp "$work/jobs.json" "$out/jobs.json"
$py bench/train_campaign.py "$work/jobs.json" --out "$work/tars.$start" --runs "$work/runs.$start" --end-at $((start + budget)) \
  2>&1 | tee "$out/campaign.log"
for tar in "$work/tars.$start"/*.tar; do
  name=$(basename "$tar")
  split -b 15M -d "$tar" "$out/$name."
done
ls -la "$out"
echo "done at $(( $(date +%s) - start )) s"
