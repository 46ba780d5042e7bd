"""Training curves of a CSVLogger run -> PNG.

    python -m stage2_ct.curves runs/stage2/vae_phantom/logs/version_0/metrics.csv --out docs/images/stage2_vae_curves.png

Several metrics.csv files (a resumed run's versions, or a run continued from another's artifact
with `--step-offsets`) are drawn as one curve.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shared.io.atomic import atomic_path  # noqa: E402


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] from a Lightning CSVLogger metrics.csv."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for k, v in row.items():
                if k in ("step", "epoch") or v in ("", None):
                    continue
                series.setdefault(k, []).append((step, float(v)))
    return series


def merge_metrics(paths: list[str | Path], offsets: list[int] | None = None) -> dict[str, list[tuple[int, float]]]:
    """read_metrics of each file, steps shifted by its offset (default 0), merged in step order."""
    offsets = offsets or [0] * len(paths)
    if len(offsets) != len(paths):
        raise ValueError(f"{len(offsets)} step offsets for {len(paths)} metrics files")
    merged: dict[str, list[tuple[int, float]]] = {}
    for path, off in zip(paths, offsets, strict=True):
        for k, pts in read_metrics(path).items():
            merged.setdefault(k, []).extend((step + off, v) for step, v in pts)
    return {k: sorted(pts) for k, pts in merged.items()}


def plot_curves(path: str | Path | list[str | Path], out: str | Path, keys: list[str] | None = None,
                offsets: list[int] | None = None) -> Path:
    series = merge_metrics(path if isinstance(path, list) else [path], offsets)
    keys = keys or [k for k in series if not k.endswith("lr") and not k.endswith("kl")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        steps, vals = zip(*series[k], strict=True)
        ax.plot(steps, vals, marker="." if len(steps) < 30 else None)
        ax.set_title(k, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        if "loss" in k or "rec" in k:
            ax.set_yscale("log")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plot a CSVLogger metrics.csv")
    p.add_argument("metrics", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--keys", nargs="*", default=None)
    p.add_argument("--step-offsets", type=int, nargs="*", default=None, help="one per metrics file")
    a = p.parse_args(argv)
    print(plot_curves(a.metrics, a.out, a.keys, a.step_offsets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
