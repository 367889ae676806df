"""The realism suite's CNN judge: real tumors vs every other source, on crops of a suite run.

    python bench/realism_cnn.py --crops DIR/judge_crops.npz [--out DIR] [--sources oracle,all] [--threads 2]

Reads the tumor-centred crops that ``bench/realism_suite.py --save-crops`` wrote (arrays case, source,
crops) and, for every source but 'real' (the oracle and autoencoder controls first, then each
variant), trains SynBTLib.realism_cnn's 3D CNN from scratch per fold, folds grouped by case: AUC of
the out-of-fold scores with a 95 % bootstrap interval over the cases. Only cases that have both a real
and that source's crop take part. Writes cnn_auc.csv and cnn_manifest.json (command, git commit, the
crops file's sha256, settings) to --out (default: next to the crops).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, print_table, write_csv  # noqa: E402

REAL, CONTROLS = "real", ("oracle", "autoencoder")
COLUMNS = ["source", "real", "synthetic", "auc", "ci_low", "ci_high", "seconds"]


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return (head or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def load_crops(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():
        raise SystemExit(f"crops file {path} not found (write it with bench/realism_suite.py --save-crops)")
    with np.load(path) as data:
        missing = {"case", "source", "crops"} - set(data.files)
        if missing:
            raise SystemExit(f"{path} lacks the arrays {sorted(missing)}")
        case, source, crops = data["case"], data["source"].astype(str), data["crops"]
    if crops.ndim != 5 or not case.shape == source.shape == crops.shape[:1]:
        raise SystemExit(f"{path}: need crops (N, C, S, S, S) with one case and source each; got {crops.shape}, "
                         f"{case.shape}, {source.shape}")
    if REAL not in set(source):
        raise SystemExit(f"{path} has no '{REAL}' crops to judge against")
    return case, source, crops


def pair(case, source, name: str) -> np.ndarray:
    """Indices of the real and ``name`` crops of the cases that have both."""
    both = np.intersect1d(case[source == REAL], case[source == name])
    return np.flatnonzero(np.isin(source, (REAL, name)) & np.isin(case, both))


def main(argv=None) -> int:
    from SynBTLib.realism_cnn import EPOCHS, cross_validated_cnn_auc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=Path, required=True, help="judge_crops.npz of bench/realism_suite.py --save-crops")
    parser.add_argument("--out", type=Path, default=None, help="folder for cnn_auc.csv and cnn_manifest.json (default: the crops' folder)")
    parser.add_argument("--sources", default=None, help="comma-separated sources to judge (default: all but real)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--repeats", type=int, default=1, help="fold shuffles averaged (each one more training per fold)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    case, source, crops = load_crops(args.crops)
    present = list(dict.fromkeys(source.tolist()))
    ordered = [s for s in CONTROLS if s in present] + [s for s in present if s not in (REAL, *CONTROLS)]
    if args.sources:
        wanted = [s.strip() for s in args.sources.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in present or s == REAL]
        if unknown:
            raise SystemExit(f"sources {unknown} not in {args.crops} (it has {present})")
        ordered = [s for s in ordered if s in wanted]
    out = args.out or args.crops.parent
    started = time.perf_counter()
    results = []
    for name in ordered:
        picked = pair(case, source, name)
        if np.unique(case[picked]).size < args.folds:
            print(f"skipped {name}: {np.unique(case[picked]).size} cases with both crops, fewer than {args.folds} folds")
            continue
        t0 = time.perf_counter()
        labels = (source[picked] == name).astype(int)
        result = cross_validated_cnn_auc(crops[picked], labels, case[picked], folds=args.folds, seed=args.seed,
                                         epochs=args.epochs, repeats=args.repeats, threads=args.threads)
        results.append({"source": name, "real": int((labels == 0).sum()), "synthetic": int(labels.sum()),
                        "auc": round(result.auc, 3), "ci_low": round(result.low, 3), "ci_high": round(result.high, 3),
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  {name}: AUC {result.auc:.3f} [{result.low:.3f}-{result.high:.3f}]", flush=True)
    if not results:
        raise SystemExit("nothing to judge")
    print(f"\nCNN judge, real vs each source, {args.folds} folds by case, AUC [95 % bootstrap interval over cases]")
    print_table(results, COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(results, COLUMNS, out / "cnn_auc.csv")
    manifest = {"command": "python bench/realism_cnn.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "git_commit": git_commit(), "crops": str(args.crops),
                "crops_sha256": hashlib.sha256(args.crops.read_bytes()).hexdigest(),
                "settings": {k: getattr(args, k) for k in ("folds", "epochs", "repeats", "seed", "threads")},
                "seconds": round(time.perf_counter() - started, 1)}
    (out / "cnn_manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"wrote {out}/cnn_auc.csv and cnn_manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
