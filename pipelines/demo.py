"""`make demo`: CT + label cases from the example reports with the default bundle, offline.

Runs guidegen-generate (pipelines.run) on `pipelines/examples/demo_reports.jsonl` (six reports:
tumours at different sites, two tumours, none, an absent kidney, an enlarged spleen), prints each
report, its files and what the generated volumes read back as, and writes one contact sheet of
all previews (OUT/contact_sheet.png).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from importlib import resources
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipelines import run  # noqa: E402
from shared.io.atomic import atomic_path  # noqa: E402

log = logging.getLogger("guidegen.demo")


def example_reports() -> Path:
    """The shipped example prompt file (found through importlib.resources: works installed too)."""
    return Path(str(resources.files("pipelines") / "examples" / "demo_reports.jsonl"))


def contact_sheet(previews: list[Path], titles: list[str], out: Path, cols: int = 2) -> Path:
    """One PNG of all previews, `cols` per row, each with its title."""
    rows = -(-len(previews) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, png, title in zip(axes.flat, previews, titles, strict=False):
        ax.imshow(plt.imread(str(png)))
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--prompts", default=None, help="prompt file (default: the shipped example reports)")
    p.add_argument("--bundle", default=None, help="bundle.yaml (default: $GUIDEGEN_BUNDLE, else the checkout's)")
    p.add_argument("--seed", type=int, default=0)
    args, extra = p.parse_known_args(argv)  # anything else goes to guidegen-generate (e.g. --stage2-steps)
    start = time.perf_counter()
    prompts = Path(args.prompts) if args.prompts else example_reports()
    out = Path(args.out)
    cmd = ["--prompts", str(prompts), "--out", str(out), "--seed", str(args.seed), "--batch-size", "6", *extra]
    if args.bundle:
        cmd += ["--bundle", args.bundle]
    code = run.main(cmd)
    if code != 0:
        return code
    previews, titles = [], []
    for line in (out / run.MANIFEST).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        d = out / "cases" / row["case_id"]
        record = json.loads((d / "findings.json").read_text(encoding="utf-8"))
        wrong = [k for k, ok in record["agreement"].items() if not ok]
        print(f"\n{row['case_id']}: {row['report']}\n  asked:     {record['summary']}\n"
              f"  reads as:  {'as asked' if not wrong else 'differs in ' + ', '.join(wrong)}\n"
              f"  files:     {out / row['image']}, {out / row['label']}, {d / 'findings.json'}, {d / 'preview.png'}")
        if (d / "preview.png").is_file():
            previews.append(d / "preview.png")
            titles.append(f"{row['case_id']}: {row['report'][:90]}")
    if previews:
        sheet = contact_sheet(previews, titles, out / "contact_sheet.png")
        print(f"\ncontact sheet: {sheet}")
    print(f"demo done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
