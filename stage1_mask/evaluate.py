"""Evaluate a stage-1 artifact on test prompts: text alignment, organ presence, tumour volume,
colon connectivity; optionally a steps x guidance sweep (on the val split) and a preview.

    python -m stage1_mask.evaluate --artifact weights/stage1_phantom \\
        --manifest data/phantom/manifest.jsonl --n 100 --out runs/stage1/eval \\
        [--sweep-steps 10 25 --sweep-guidance 1 2 3 --sweep-n 32] [--preview docs/stage1_preview.png]

Prompts are `Findings.summary()` of the split's cases. "Shuffled" pairs each case with another
case's text (a fixed derangement) and scores the masks against the ORIGINAL case: it must sit
near chance (the sum over tumour-site sets of their squared frequency). Writes JSON + markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.findings import SITES, Findings, Tumor
from shared.labels import LabelTable, default_labels
from shared.text.volume import findings_from_volume
from stage1_mask.data import MaskCase, load_cases
from stage1_mask.metrics import (
    LABEL_FIELDS,
    colon_components,
    dice_per_class,
    expected_organs,
    field_agreement,
    reported_tumor_ml,
)
from stage1_mask.postprocess import remove_islands
from stage1_mask.sampler import MaskSampler, load_stage1, sample_masks

log = logging.getLogger(__name__)


def generate(sampler: MaskSampler, texts: list[str], steps: int, guidance: float, seed: int,
             batch: int, prior_correction: float | None = None,
             size_control: bool | None = None) -> tuple[np.ndarray, float]:
    """Label volumes (N, X, Y, Z) uint8 and seconds per mask; batch i uses seed + i."""
    out, t0 = [], time.perf_counter()
    for i in range(0, len(texts), batch):
        gen = torch.Generator().manual_seed(seed + i)
        probs = sample_masks(sampler, texts[i:i + batch], gen, steps=steps, guidance=guidance,
                             prior_correction=prior_correction, size_control=size_control)
        out.append(probs.argmax(1).to(torch.uint8).numpy())
    return np.concatenate(out), (time.perf_counter() - t0) / max(len(texts), 1)


def cleaned(masks: np.ndarray, min_voxels: int) -> np.ndarray:
    """`remove_islands` on every mask (N, X, Y, Z)."""
    return np.stack([remove_islands(m, min_voxels) for m in masks])


def chance_site_accuracy(cases: list[MaskCase]) -> float:
    """P(two random cases share the tumour-site set) = sum_s p(s)^2."""
    keys = [tuple(sorted(c.findings.tumor_sites)) for c in cases]
    _, counts = np.unique(np.array([",".join(k) for k in keys]), return_counts=True)
    p = counts / counts.sum()
    return float((p**2).sum())


def score(masks: np.ndarray, cases: list[MaskCase], table: LabelTable,
          ref_counts: dict[str, float]) -> dict[str, Any]:
    """Metrics of masks[i] against cases[i] (the case whose text should have produced it)."""
    voxel_ml = [abs(np.linalg.det(c.affine[:3, :3])) / 1000.0 for c in cases]
    tumor_id = table.tumor_ids[0]
    colon_ids = [table.id_of("colon"), tumor_id]
    reads = [findings_from_volume(m, c.affine, table=table) for m, c in zip(masks, cases, strict=True)]
    agree = [field_agreement(r, c.findings) for r, c in zip(reads, cases, strict=True)]
    present: dict[str, list[bool]] = {n: [] for n in ref_counts}
    ratio_report, ratio_case, comps = [], [], []
    for m, c, vml in zip(masks, cases, voxel_ml, strict=True):
        counts = np.bincount(m.ravel(), minlength=table.num_classes)
        for organ in expected_organs(c.findings, table):
            present[organ].append(bool(counts[table.id_of(organ)] >= 0.1 * ref_counts[organ]))
        gen_ml = counts[tumor_id] * vml
        rep = reported_tumor_ml(c.findings)
        if rep:
            ratio_report.append(gen_ml / rep)
            gt = (c.labels == tumor_id).sum() * vml
            if gt > 0:
                ratio_case.append(gen_ml / gt)
        comps.append(colon_components(m, colon_ids))
    dice = dice_per_class(torch.from_numpy(masks.astype(np.int64)),
                          torch.from_numpy(np.stack([c.labels for c in cases]).astype(np.int64)),
                          table.num_classes)
    organ_rate = {n: float(np.mean(v)) for n, v in present.items() if v}
    per_case = [{"case": c.case_id, "sites": sorted(c.findings.tumor_sites),
                 "read_sites": sorted(r.tumor_sites), "site_ok": a["tumor_sites"]}
                for r, c, a in zip(reads, cases, agree, strict=True)]
    by_count: dict[str, list[bool]] = {}
    for r in per_case:
        by_count.setdefault(str(len(r["sites"])), []).append(r["site_ok"])
    rr, rc = np.array(ratio_report), np.array(ratio_case)
    return {
        "n": len(cases),
        "align": {f: float(np.mean([a[f] for a in agree])) for f in LABEL_FIELDS},
        "organ_presence": organ_rate,
        "organ_presence_min": min(organ_rate.values()),
        "tumor_volume_vs_report": {"median": float(np.median(rr)) if len(rr) else None,
                                   "within_50pct": float(np.mean((rr >= 0.5) & (rr <= 1.5))) if len(rr) else None},
        "tumor_volume_vs_case": {"median": float(np.median(rc)) if len(rc) else None,
                                 "within_50pct": float(np.mean((rc >= 0.5) & (rc <= 1.5))) if len(rc) else None},
        "colon_one_component": float(np.mean(np.array(comps) == 1)),
        "colon_components_mean": float(np.mean(comps)),
        "dice_vs_case": {table.names[k]: float(dice[k]) for k in range(1, table.num_classes)},
        "site_accuracy_by_tumour_count": {k: [float(np.mean(v)), len(v)] for k, v in sorted(by_count.items())},
        "per_case": per_case,
    }


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation with no fixed point (shifted random order)."""
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=int)
    perm[order] = np.roll(order, 1)
    return perm


def preview(sampler: MaskSampler, path: Path, steps: int, guidance: float, seed: int) -> None:
    """One seed, five tumour sites: the masks side by side (labels over a flat CT placeholder)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from shared.io.preview import save_preview

    spacing = sampler.artifact_metadata.get("spacing") or [1.0, 1.0, 1.0]
    affine = np.diag([*spacing, 1.0])
    texts = [Findings(tumors=(Tumor(site, 45.0),)).summary() for site in SITES]
    gen_masks = []
    for text in texts:  # same seed for every site: only the text differs
        probs = sample_masks(sampler, [text], torch.Generator().manual_seed(seed), steps, guidance)
        gen_masks.append(probs.argmax(1)[0].numpy().astype(np.uint8))
    tiles = []
    for site, text, m in zip(SITES, texts, gen_masks, strict=True):
        tile = path.with_name(f"{path.stem}_{site}.png")
        tumor_z = np.nonzero((m == default_labels().tumor_ids[0]).any((0, 1)))[0]
        ks = [int(np.median(tumor_z))] if len(tumor_z) else None
        save_preview(tile, np.zeros(m.shape, np.float32), m, affine, title=f"{site}: {text}",
                     axial_slices=ks, n_axial=1)
        tiles.append(Image.open(tile).convert("RGB"))
        tile.unlink()
    height = max(t.height for t in tiles)
    canvas = Image.new("RGB", (sum(t.width for t in tiles), height), "white")
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width
    canvas.save(path)
    plt.close("all")


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Stage-1 evaluation", "", f"artifact: `{report['artifact']}`, split `{report['split']}`, "
             f"n = {report['n']}, steps {report['steps']}, guidance {report['guidance']}, "
             f"seed {report['seed']}", ""]
    if report.get("sweep"):
        lines += ["## Steps x guidance sweep (" + report["sweep_split"] + " split)", "",
                  "| steps | guidance | site acc | presence | min organ presence | tumour vol / report (median) | within ±50% | colon 1 comp | s/mask |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in report["sweep"]:
            m = r["metrics"]
            lines.append(f"| {r['steps']} | {r['guidance']} (pc {r.get('prior_correction')}) | {m['align']['tumor_sites']:.3f} | "
                         f"{m['align']['tumor_presence']:.3f} | {m['organ_presence_min']:.3f} | "
                         f"{m['tumor_volume_vs_report']['median']:.2f} | "
                         f"{m['tumor_volume_vs_report']['within_50pct']:.2f} | "
                         f"{m['colon_one_component']:.2f} | {r['sec_per_mask']:.2f} |")
            if "metrics_clean" in r:
                c = r["metrics_clean"]
                lines.append(f"| {r['steps']} | {r['guidance']} (pc {r.get('prior_correction')}, islands removed) | "
                             f"{c['align']['tumor_sites']:.3f} | {c['align']['tumor_presence']:.3f} | "
                             f"{c['organ_presence_min']:.3f} | {c['tumor_volume_vs_report']['median']:.2f} | "
                             f"{c['tumor_volume_vs_report']['within_50pct']:.2f} | "
                             f"{c['colon_one_component']:.2f} | |")
        lines.append("")
    t = report["true_text"]
    s = report.get("shuffled_text") or {"align": {f: float("nan") for f in LABEL_FIELDS}}
    c = report.get("true_text_clean")
    n_isl = report.get("clean_min_voxels")
    head = "| metric | true text | shuffled text |" + (f" true text, islands < {n_isl} removed |" if c else "")
    lines += ["## Test prompts", "", head, "|---|---|---|" + ("---|" if c else "")]

    def row(name: str, value: str, shuffled: str, clean: str) -> None:
        lines.append(f"| {name} | {value} | {shuffled} |" + (f" {clean} |" if c else ""))

    for f in LABEL_FIELDS:
        row(f"align/{f}", f"{t['align'][f]:.3f}", f"{s['align'][f]:.3f}", f"{c['align'][f]:.3f}" if c else "")
    row("chance site accuracy", f"{report['chance_site_accuracy']:.3f}", "", "")
    for key in ("tumor_volume_vs_report", "tumor_volume_vs_case"):
        row(f"{key} median", f"{t[key]['median']:.2f}", "", f"{c[key]['median']:.2f}" if c else "")
        row(f"{key} within ±50%", f"{t[key]['within_50pct']:.2f}", "",
            f"{c[key]['within_50pct']:.2f}" if c else "")
    row("colon ∪ tumour one component", f"{t['colon_one_component']:.3f}", "",
        f"{c['colon_one_component']:.3f}" if c else "")
    row("colon ∪ tumour components (mean)", f"{t['colon_components_mean']:.2f}", "",
        f"{c['colon_components_mean']:.2f}" if c else "")
    row("min organ presence", f"{t['organ_presence_min']:.3f}", "", f"{c['organ_presence_min']:.3f}" if c else "")
    lines += ["", "| organ | presence rate | Dice vs case |", "|---|---|---|"]
    for organ, rate in t["organ_presence"].items():
        lines.append(f"| {organ} | {rate:.3f} | {t['dice_vs_case'][organ]:.3f} |")
    lines.append(f"| colorectal_tumor | | {t['dice_vs_case']['colorectal_tumor']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default="weights/stage1_phantom")
    parser.add_argument("--manifest", default="data/phantom/manifest.jsonl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--n-shuffled", type=int, default=None,
                        help="prompts for the shuffled-text control (default: --n; 0 = skip)")
    parser.add_argument("--steps", type=int, default=None, help="default: the artifact's")
    parser.add_argument("--guidance", type=float, default=None, help="default: the artifact's")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sweep-steps", type=int, nargs="*", default=[])
    parser.add_argument("--sweep-guidance", type=float, nargs="*", default=[])
    parser.add_argument("--sweep-prior-correction", type=float, nargs="*", default=[])
    parser.add_argument("--prior-correction", type=float, default=None,
                        help="logit adjustment strength (default: the artifact's, else 1)")
    parser.add_argument("--size-control", choices=["expected", "argmax", "per_tumour", "off"], default=None,
                        help="match the tumour volume to the reported size at sampling "
                             "(stage1_mask.size; default: the artifact's, else off)")
    parser.add_argument("--sweep-split", default="val")
    parser.add_argument("--sweep-n", type=int, default=32)
    parser.add_argument("--shuffled-only", action="store_true",
                        help="only the shuffled-text control (run it in parallel with the main one)")
    parser.add_argument("--clean-min-voxels", type=int, default=0,
                        help="also score the masks after stage1_mask.postprocess.remove_islands "
                             "with this island size (0 = off)")
    parser.add_argument("--preview", default=None, help="PNG: one seed, five tumour sites")
    parser.add_argument("--out", default="runs/stage1/eval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = {None: None, "off": False}.get(args.size_control, args.size_control)
    sampler = load_stage1(args.artifact)
    meta = sampler.artifact_metadata
    table = default_labels()
    cases_all = load_cases(args.manifest, meta["grid"], table)
    train = [c for c in cases_all if c.split == "train"]
    ref_counts = {n: float(np.median([(c.labels == table.id_of(n)).sum() for c in train]))
                  for n in table.names[1:] if table.id_of(n) not in table.tumor_ids}
    report: dict[str, Any] = {"artifact": str(args.artifact), "split": args.split, "seed": args.seed,
                              "clean_min_voxels": args.clean_min_voxels,
                              "presence_threshold": "organ voxels >= 10% of its median train volume"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.sweep_steps and args.sweep_guidance:
        sweep_cases = [c for c in cases_all if c.split == args.sweep_split][: args.sweep_n]
        texts = [c.findings.summary() for c in sweep_cases]
        report["sweep_split"], report["sweep"] = args.sweep_split, []
        configs = [(st, g, pc) for st in args.sweep_steps for g in args.sweep_guidance
                for pc in (args.sweep_prior_correction or [args.prior_correction])]
        for steps, g, pc in configs:
            masks, spm = generate(sampler, texts, steps, g, args.seed, args.batch, pc, size)
            m = score(masks, sweep_cases, table, ref_counts)
            row = {"steps": steps, "guidance": g, "prior_correction": pc, "size_control": size,
                   "sec_per_mask": spm,
                   "metrics": m}
            if args.clean_min_voxels:
                row["metrics_clean"] = score(cleaned(masks, args.clean_min_voxels), sweep_cases,
                                             table, ref_counts)
            report["sweep"].append(row)
            log.info("sweep steps=%d guidance=%.2f prior-correction=%s site=%.3f presence=%.3f "
                     "min-organ=%.3f vol=%.2f (%.1fs/mask)", steps, g, pc, m["align"]["tumor_sites"],
                     m["align"]["tumor_presence"], m["organ_presence_min"],
                     m["tumor_volume_vs_report"]["median"], spm)
            (out / "sweep.json").write_text(json.dumps(report["sweep"], indent=1))

    if args.n == 0:
        (out / "eval.json").write_text(json.dumps(report, indent=1))
        return 0
    steps = args.steps or sampler.sampling.steps
    guidance = sampler.sampling.guidance if args.guidance is None else args.guidance
    cases = [c for c in cases_all if c.split == args.split][: args.n]
    texts = [c.findings.summary() for c in cases]
    report.update(n=len(cases), steps=steps, guidance=guidance, prior_correction=args.prior_correction,
                  size_control=size,
                  chance_site_accuracy=chance_site_accuracy(cases))
    if not args.shuffled_only:
        masks, spm = generate(sampler, texts, steps, guidance, args.seed, args.batch,
                              args.prior_correction, size)
        report["sec_per_mask"] = spm
        report["true_text"] = score(masks, cases, table, ref_counts)
        if args.clean_min_voxels:
            report["true_text_clean"] = score(cleaned(masks, args.clean_min_voxels), cases, table,
                                              ref_counts)
    n_shuf = len(cases) if args.n_shuffled is None else min(args.n_shuffled, len(cases))
    if n_shuf:
        sub = cases[:n_shuf]
        perm = derangement(n_shuf, args.seed)
        shuffled, _ = generate(sampler, [texts[j] for j in perm], steps, guidance, args.seed,
                               args.batch, args.prior_correction, size)
        report["shuffled_text"] = score(shuffled, sub, table, ref_counts)
        report["shuffled_text"]["chance_site_accuracy"] = chance_site_accuracy(sub)
    if args.preview:
        preview(sampler, Path(args.preview), steps, guidance, args.seed)
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    if args.shuffled_only:
        log.info("shuffled site accuracy %.3f", report["shuffled_text"]["align"]["tumor_sites"])
        return 0
    (out / "eval.md").write_text(_markdown(report))
    log.info("site accuracy true %.3f shuffled %.3f (chance %.3f); wrote %s",
             report["true_text"]["align"]["tumor_sites"],
             (report.get("shuffled_text") or {"align": {"tumor_sites": float("nan")}})["align"]["tumor_sites"],
             report["chance_site_accuracy"], out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
