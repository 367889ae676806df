"""Before/after table: far FP (mL per test case) and lesion Dice, arms real vs real+synthetic, same seeds,
crossed bootstrap (study_stats); real and 'before' units are taken at the seeds with an 'after' unit, and each
paired difference uses the seeds both of its arms have."""
import json
from pathlib import Path
from SynBTLib.study_stats import arm_mean, paired_difference

OLD, NEW = Path("/tmp/study_cpu/runs"), Path("/tmp/seg_fp/runs")
units = {}
for arm in ("handcrafted", "offline"):
    for d in sorted((NEW / f"{arm}_as_real").glob("seed_*/metrics.json")):
        units.setdefault(int(d.parent.name[5:]), []).append(arm)
seeds = sorted(s for s, arms in units.items())
arms_after = sorted({a for v in units.values() for a in v})
sources = {"real": lambda s: OLD / "real" / f"seed_{s}"}
for a in arms_after:
    sources[f"{a}_before"] = (lambda a: lambda s: OLD / a / f"seed_{s}")(a)
    sources[f"{a}_after"] = (lambda a: lambda s: NEW / f"{a}_as_real" / f"seed_{s}")(a)
lesions, cases = [], []
for name, f in sources.items():
    for s in seeds:
        if not (f(s) / "metrics.json").is_file():
            continue  # pairs use the seeds both arms have
        m = json.loads((f(s) / "metrics.json").read_text())
        lesions += [{"arm": name, "seed": s, "case": r["case"], "lesion": r["lesion"], "dice": r["dice"]} for r in m["lesions"]]
        cases += [{"arm": name, "seed": s, "case": c["case"], "lesion": "case", "dice": c["dice"], "fp_ml": c["fp_ml"]} for c in m["cases"]]
        print(f"{name:18s} seed {s}: lesion Dice {sum(r['dice'] for r in m['lesions']) / len(m['lesions']):.3f}  "
              f"far FP {sum(c['fp_ml'] for c in m['cases']) / len(m['cases']):.2f} mL  case Dice "
              f"{sum(c['dice'] for c in m['cases']) / len(m['cases']):.3f}  best step {m['best_step']}")
fmt = lambda i, f="+.3f": f"{i.mean:{f}} [{i.low:{f}}, {i.high:{f}}]"
print(f"\nseeds {seeds}; crossed bootstrap over seeds and 60 test cases (2000 resamples)")
print("| arm | lesion Dice | far FP (mL) | case Dice |\n|---|---|---|---|")
for name in sources:
    print(f"| {name} | {fmt(arm_mean(lesions, name), '.3f')} | {fmt(arm_mean(cases, name, key='fp_ml'), '.2f')} | "
          f"{fmt(arm_mean(cases, name), '.3f')} |")
print("\n| A - B | lesion Dice | far FP (mL) | case Dice |\n|---|---|---|---|")
pairs = [(f"{a}_before", "real") for a in arms_after] + [(f"{a}_after", "real") for a in arms_after] + \
        [(f"{a}_after", f"{a}_before") for a in arms_after]
if len(arms_after) == 2:
    pairs += [("offline_before", "handcrafted_before"), ("offline_after", "handcrafted_after")]
for a, b in pairs:
    print(f"| {a} - {b} | {fmt(paired_difference(lesions, a, b))} | {fmt(paired_difference(cases, a, b, key='fp_ml'), '+.2f')} | "
          f"{fmt(paired_difference(cases, a, b))} |")
