"""Benchmark the phantom generator: seconds per case at a grid, per-organ volume and HU ranges.

    python bench/bench_phantom.py [--n 10] [--grid default|small] [--json out.json]

Prints mean / max s per case (one process, one thread of numpy work) and a table of organ
volumes (mL) and eroded-mask mean HU per phase over the generated cases.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage

from shared.data.phantom import PhantomGrid, generate_case
from shared.labels import default_labels

GRIDS = {"default": PhantomGrid(), "small": PhantomGrid((48, 48, 32), (8.0, 8.0, 12.5))}
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "pancreas", "duodenum",
          "small_bowel", "colon", "urinary_bladder", "colorectal_tumor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    grid, table = GRIDS[args.grid], default_labels()
    generate_case(10_000, grid=grid)  # warm-up (imports, caches)
    times, vols, hus = [], {o: [] for o in ORGANS}, {}
    for seed in range(args.n):
        t0 = time.perf_counter()
        case = generate_case(seed, grid=grid)
        times.append(time.perf_counter() - t0)
        phase = case.findings.phase
        for o in ORGANS:
            mask = case.labels == table.id_of(o)
            if mask.any():
                vols[o].append(case.meta["volumes_ml"][o])
                core = ndimage.binary_erosion(mask, iterations=2 if o != "colorectal_tumor" else 1)
                if core.sum() > 20:
                    key = (o, phase, case.findings.liver if o == "liver" else "")
                    hus.setdefault(key, []).append(float(case.ct[core].mean()))
    print(f"grid {grid.shape} @ {grid.spacing} mm: {np.mean(times):.3f} s/case mean, "
          f"{np.max(times):.3f} max over {args.n} cases")
    print(f"{'organ':18s} {'n':>3s} {'volume mL min-max':>20s}")
    for o in ORGANS:
        if vols[o]:
            print(f"{o:18s} {len(vols[o]):3d} {min(vols[o]):9.1f} - {max(vols[o]):8.1f}")
    print(f"{'organ (phase, liver)':40s} {'n':>3s} {'eroded mean HU min-max':>24s}")
    for (o, ph, lv), v in sorted(hus.items()):
        print(f"{o + ' ' + ph + ' ' + lv:40s} {len(v):3d} {min(v):10.1f} - {max(v):8.1f}")
    if args.json:
        out = {"s_per_case": float(np.mean(times)), "n": args.n, "grid": list(grid.shape),
               "volumes_ml": {o: [min(v), max(v)] for o, v in vols.items() if v},
               "hu": {" ".join(k).strip(): [min(v), max(v)] for k, v in hus.items()}}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
