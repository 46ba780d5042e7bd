"""Training curve of a stage-1 run from its CSVLogger files (all versions, so resumed runs join).

    python -m stage1_mask.curve --logs runs/stage1/phantom/logs --out docs/stage1_curve.png

Prints a markdown table: train loss (mean per step bin) and the validation metrics per epoch.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def read_metrics(logs: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for f in sorted(logs.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with f.open() as fh:
            rows += list(csv.DictReader(fh))
    return rows


def series(rows: list[dict[str, str]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.array(sorted(pts))
    return a[:, 0], a[:, 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", default="runs/stage1/phantom/logs")
    parser.add_argument("--out", default="runs/stage1/curve.png")
    parser.add_argument("--bins", type=int, default=10)
    args = parser.parse_args(argv)
    rows = read_metrics(Path(args.logs))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    s, loss = series(rows, "train/loss")
    axes[0].plot(s, loss, lw=0.5, alpha=0.4, label="train/loss")
    if len(loss) > 20:
        k = 20
        axes[0].plot(s[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), label="moving mean (20)")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].legend()
    val_keys = ["val/align/tumor_sites", "val/align/tumor_presence", "val/dice/mean"]
    for key in val_keys:
        vs, v = series(rows, key)
        axes[1].plot(vs, v, marker="o", label=key)
    axes[1].set_xlabel("step")
    axes[1].set_ylim(0, 1.05)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print("| steps | train/loss (mean) |\n|---|---|")
    if len(s):
        edges = np.linspace(s.min(), s.max() + 1, args.bins + 1)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (s >= lo) & (s < hi)
            if sel.any():
                print(f"| {int(lo)}-{int(hi) - 1} | {loss[sel].mean():.4f} |")
    print("\n| step | " + " | ".join(val_keys) + " |\n|---|" + "---|" * len(val_keys))
    vs0, _ = series(rows, val_keys[0])
    for step in vs0:
        vals = []
        for key in val_keys:
            ks, kv = series(rows, key)
            vals.append(f"{kv[ks == step][0]:.3f}" if (ks == step).any() else "")
        print(f"| {int(step)} | " + " | ".join(vals) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
