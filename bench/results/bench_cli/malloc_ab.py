import json, os, subprocess, sys
root = "/tmp/speed_mall"
code = """
import sys, json
sys.path.insert(0, '%s/bench')
import SynBTLib.commands.synthesize as s
if sys.argv[1] == 'off':
    s.keep_freed_memory = lambda: False
import bench_cli
r = bench_cli.worker(json.loads(sys.argv[2]))
print(json.dumps({'arm': sys.argv[1], 'total': round(r['total_s'],1), 'denoise': round(r['stages']['denoise'],1), 'rss': round(r['peak_rss_gb'],2), 'stages': {k: round(v,1) for k,v in r['stages'].items()}}))
""" % root
for rep in range(2):
    for arm in ("off", "on"):
        spec = {"case": "/tmp/synbt_bench_cli/512x512x160/case", "mask": "/tmp/synbt_bench_cli/512x512x160/mask_40mm.nii.gz",
                "mode": "mask", "diameter_mm": 40.0, "steps": 30, "seed": 0, "bundle": None, "out": f"/tmp/mall_{arm}_{rep}"}
        subprocess.run(["rm", "-rf", spec["out"]])
        env = dict(os.environ, PYTHONPATH=root)
        t = os.times()
        out = subprocess.run([sys.executable, "-c", code, arm, json.dumps(spec)], capture_output=True, text=True, env=env)
        t2 = os.times()
        line = [l for l in out.stdout.splitlines() if l.startswith('{"arm"')]
        print(line[-1] if line else out.stderr[-500:], "child user/sys s:", round(t2.children_user - t.children_user, 1), round(t2.children_system - t.children_system, 1), "load", os.getloadavg()[0], flush=True)
