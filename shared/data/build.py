"""Write a phantom dataset: NIfTI CT + labels, report, findings and a JSONL manifest.

    python -m shared.data.build --out data/phantom --n-cases 200 --jobs 2

Layout under --out: imagesTr/case_XXXX.nii.gz (int16 HU), labelsTr/case_XXXX.nii.gz (uint8),
reports/case_XXXX.txt, findings/case_XXXX.json, manifest.jsonl, dataset.yaml (the settings).
Resumable: a case whose findings file exists is complete (it is written last) and is skipped.
Parallel over processes. Splits are fixed per case index (80/10/10).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from shared.data.manifest import ManifestEntry, write_manifest
from shared.data.phantom import PhantomGrid, generate_case
from shared.data.reports import write_report
from shared.findings import Findings
from shared.io.atomic import write_text_atomic
from shared.io.nifti import write_case

log = logging.getLogger(__name__)

GRIDS = {
    "default": PhantomGrid(),
    "half": PhantomGrid(shape=(64, 64, 40), spacing=(6.0, 6.0, 10.0)),
    "small": PhantomGrid(shape=(32, 32, 16), spacing=(12.0, 12.0, 25.0)),
}


@dataclass(frozen=True)
class CasePaths:
    image: Path
    label: Path
    report: Path
    findings: Path

    @classmethod
    def under(cls, root: Path, case_id: str) -> CasePaths:
        return cls(
            image=root / "imagesTr" / f"{case_id}.nii.gz",
            label=root / "labelsTr" / f"{case_id}.nii.gz",
            report=root / "reports" / f"{case_id}.txt",
            findings=root / "findings" / f"{case_id}.json",
        )


def case_id(index: int) -> str:
    return f"case_{index:04d}"


def split_of(index: int) -> str:
    return {8: "val", 9: "test"}.get(index % 10, "train")


def case_seed(base_seed: int, index: int) -> int:
    """Independent, reproducible seed per (dataset seed, case index)."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1)[0])


def write_phantom_case(root: Path, index: int, base_seed: int, grid: PhantomGrid) -> str:
    """Generate and write one case unless already complete; returns its case id."""
    cid = case_id(index)
    paths = CasePaths.under(root, cid)
    if paths.findings.is_file():
        return cid
    seed = case_seed(base_seed, index)
    case = generate_case(seed, grid=grid)
    report = write_report(case.findings, np.random.default_rng([seed, 1]))
    write_case(paths.image, paths.label, case.ct, case.labels, case.affine)
    write_text_atomic(paths.report, report + "\n")
    record = {"case_id": cid, "seed": seed, "findings": case.findings.to_dict(), "meta": case.meta}
    write_text_atomic(paths.findings, json.dumps(record, indent=1, default=_json_default))
    return cid


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _entry(root: Path, index: int) -> ManifestEntry:
    cid = case_id(index)
    paths = CasePaths.under(root, cid)
    record = json.loads(paths.findings.read_text())
    return ManifestEntry(
        case_id=cid,
        image=paths.image,
        label=paths.label,
        report=paths.report.read_text(encoding="utf-8").strip(),
        split=split_of(index),
        findings=Findings.from_dict(record["findings"]),
    )


def build_dataset(
    out: str | Path, n_cases: int, jobs: int = 1, seed: int = 0, grid: str | PhantomGrid = "default"
) -> Path:
    """Write (or complete) a phantom dataset; returns the manifest path."""
    root = Path(out)
    grid_obj = GRIDS[grid] if isinstance(grid, str) else grid
    settings = {"n_cases": n_cases, "seed": seed, "shape": list(grid_obj.shape),
                "spacing": list(grid_obj.spacing)}
    settings_path = root / "dataset.yaml"
    if settings_path.is_file():
        old = yaml.safe_load(settings_path.read_text())
        if {k: old.get(k) for k in ("seed", "shape", "spacing")} != {
            k: settings[k] for k in ("seed", "shape", "spacing")
        }:
            raise SystemExit(f"{settings_path}: existing dataset was built with {old}; "
                             f"refusing to mix it with {settings} (choose another --out)")
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(settings_path, yaml.safe_dump(settings, sort_keys=False))
    todo = [i for i in range(n_cases) if not CasePaths.under(root, case_id(i)).findings.is_file()]
    log.info("%s: %d cases, %d to generate with %d process(es)", root, n_cases, len(todo), jobs)
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for k, _ in enumerate(pool.map(write_phantom_case, [root] * len(todo), todo,
                                           [seed] * len(todo), [grid_obj] * len(todo),
                                           chunksize=4)):
                if (k + 1) % 25 == 0:
                    log.info("%d / %d cases", k + 1, len(todo))
    else:
        for i in todo:
            write_phantom_case(root, i, seed, grid_obj)
    manifest = root / "manifest.jsonl"
    write_manifest(manifest, [_entry(root, i) for i in range(n_cases)])
    log.info("wrote %s", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/phantom", help="output folder")
    parser.add_argument("--n-cases", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = build_dataset(args.out, args.n_cases, args.jobs, args.seed, args.grid)
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
