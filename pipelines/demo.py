"""`make demo`: example outputs on a fresh machine, offline.

Until the text -> mask -> CT pipeline has trained default weights, the demo writes procedural
phantom cases (CT + labels + report + findings, the default training data) with previews.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from shared.data.build import CasePaths, build_dataset, case_id
from shared.io.nifti import read_nifti
from shared.io.preview import save_preview

log = logging.getLogger("guidegen.demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--n-cases", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--grid", default="default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    out = Path(args.out)
    manifest = build_dataset(out, args.n_cases, jobs=1, seed=args.seed, grid=args.grid)
    previews = []
    for i in range(args.n_cases):
        paths = CasePaths.under(out, case_id(i))
        ct, affine = read_nifti(paths.image)
        labels, _ = read_nifti(paths.label)
        report = paths.report.read_text(encoding="utf-8").strip()
        png = out / "previews" / f"{case_id(i)}.png"
        save_preview(png, ct, labels, affine, title=report[:300])
        previews.append(png)
        print(f"\n{case_id(i)}: {report}\n  CT {paths.image}\n  labels {paths.label}\n  preview {png}")
    print(f"\nmanifest: {manifest}\n{len(previews)} cases in {time.perf_counter() - start:.1f} s "
          f"(phantom cases: the trained text->CT pipeline is not bundled yet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
