"""Which XLA:CPU library lowering runs our DiT fastest: `dit_cpu_speed.py` once per XLA_FLAGS setting (each in
its own process: XLA reads the flags when the backend starts), official PyTorch timed alongside every time.

    python experiments/official/xla_cpu_flags.py --official /tmp/wan22_official [--repeats 5]
        [--out experiments/official/results/xla_cpu_flags.csv]

Settings: XLA's default (dots as YNNPACK fusions), YNNPACK fusions that also take the element-wise epilogues
(and reductions), oneDNN dot fusions, and no library fusion (XLA's own dot emitter).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "default": "",
    "ynn dot+eltwise": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise",
    "ynn dot+eltwise+reduce": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "onednn dot": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "no library fusion": "--xla_cpu_experimental_ynn_fusion_type=",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="names of SETTINGS to run")
    ap.add_argument("--out", default=str(HERE / "results" / "xla_cpu_flags.csv"))
    args = ap.parse_args()
    rows = []
    for name, flags in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
        proc = subprocess.run([sys.executable, str(HERE / "dit_cpu_speed.py"), "--official", args.official,
                               "--repeats", str(args.repeats), "--json"], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        row = {"setting": name, "xla_flags": flags, "official_s": f"{res['official_median_s']:.3f}",
               "ours_s": f"{res['ours_median_s']:.3f}", "speedup": f"{res['speedup']:.3f}",
               "ours_gflops_per_s": f"{res['ours_gflops_per_s']:.1f}",
               "parity": f"{res['parity_max_abs_over_max_ref']:.2e}"}
        rows.append(row)
        print(row, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
