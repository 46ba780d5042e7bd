"""`guidegen-generate`: reports -> CT + label volumes with a bundle, written as a dataset.

    guidegen-generate --prompts reports.txt --out outputs/synth [--n-per-prompt 4] [--seed 0]
        [--bundle weights/bundle.yaml] [--stage1-steps 25] [--stage2-guidance 1.05] [--batch-size 4]

Per case: the CT (int16 HU) and labels (uint8, the bundle's label table) as NIfTI on one RAS
geometry, where `--format` puts them (pipelines.layouts: plain OUT/cases/ID/{ct,labels}.nii.gz,
an nnU-Net v2 raw dataset, or plain + a MONAI datalist); OUT/cases/ID/findings.json (the prompt,
what it asks for, what the generated volumes read back as, the seed and settings) and preview.png
(axial slices through the tumours when there are any, and a coronal one). OUT/manifest.jsonl lists
the finished cases, an earlier run's first, then this prompt file's in prompt order, in the
project's manifest schema (split "train"), so a generated set feeds straight into training and
evaluation.

The prompt file is checked whole before anything is generated (pipelines.prompts): bad lines are
all reported with their line numbers, exit status 2, nothing written. Every file is written
atomically and `findings.json` last, so a case is complete when it exists; rerunning the same
command skips complete cases, regenerates the rest and removes temporary files a killed run left.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipelines.layouts import FORMATS, Layout, make_layout
from pipelines.masks import MaskCase, case_id_of, load_mask, mask_files, to_input_grid
from pipelines.prompts import CASE_ID, Case, PromptError, case_seed, read_prompts
from shared.io.atomic import write_text_atomic
from shared.io.nifti import write_case
from shared.io.preview import focus_axial_slices, save_preview

log = logging.getLogger("guidegen.generate")

MANIFEST = "manifest.jsonl"


def is_complete(layout: Layout, case_id: str, preview: bool) -> bool:
    d = layout.case_dir(case_id)
    files = [layout.image(case_id), layout.label(case_id), d / "findings.json"] + ([d / "preview.png"] if preview else [])
    return all(f.is_file() for f in files)


def remove_temporaries(out: Path) -> int:
    """Delete temporary files of atomic writes (`.NAME.*.tmp*`) a killed run left behind."""
    stray = [p for p in out.glob("**/.*.tmp*") if p.is_file()]
    for p in stray:
        p.unlink()
    return len(stray)


def id_clashes(layout: Layout, cases: list[Case]) -> list[str]:
    """Complete cases in OUT whose findings.json records another prompt or seed than `cases` ask for."""
    out = []
    for c in cases:
        rec = json.loads((layout.case_dir(c.case_id) / "findings.json").read_text(encoding="utf-8"))
        if rec.get("prompt") != c.report or rec.get("seed") != c.seed:
            out.append(f"line {c.line}: {c.case_id} was generated from {rec.get('prompt')!r} (seed {rec.get('seed')})")
    return out


def manifest_row(layout: Layout, case: Case) -> str:
    """The case's manifest row (paths relative to OUT)."""
    rel = lambda p: p.relative_to(layout.out).as_posix()  # noqa: E731
    return json.dumps({"case_id": case.case_id, "image": rel(layout.image(case.case_id)),
                       "label": rel(layout.label(case.case_id)), "report": case.report,
                       "split": "train", "findings": case.findings.to_dict()}) + "\n"


def write_manifest(layout: Layout, cases: list[Case], done: set[str]) -> int:
    """OUT/manifest.jsonl: the complete cases of an earlier run with other ids (kept as they were),
    then those of `cases` (`done`) in prompt order; the layout's dataset files follow it. Returns
    the number of rows."""
    path, current = layout.out / MANIFEST, {c.case_id for c in cases}
    rows, ids = [], []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            cid = json.loads(line)["case_id"]
            if cid not in current and (layout.case_dir(cid) / "findings.json").is_file():
                rows.append(line + "\n")
                ids.append(cid)
    for c in cases:
        if c.case_id in done:
            rows.append(manifest_row(layout, c))
            ids.append(c.case_id)
    write_text_atomic(path, "".join(rows))
    layout.finish(ids)
    return len(rows)


def write_case_files(layout: Layout, case: Case, gen: Any, settings: dict[str, Any], preview: bool,
                     tumor_ids: list[int]) -> None:
    """CT, labels, preview, then findings.json (the completion mark), each atomically."""
    d = layout.case_dir(case.case_id)
    write_case(layout.image(case.case_id), layout.label(case.case_id), gen.ct, gen.labels, gen.affine)
    if preview:
        ks = focus_axial_slices(gen.labels, tumor_ids, 4)
        save_preview(d / "preview.png", gen.ct, gen.labels, gen.affine, axial_slices=ks,
                     title=f"{case.case_id}: {case.report[:200]}")
    record = {"case_id": case.case_id, "prompt": case.report, "prompt_line": case.line, "seed": case.seed,
              "asked": case.findings.to_dict(), "summary": case.findings.summary(),
              "readback": gen.readback.to_dict(), "agreement": gen.agreement,
              "reads_as_asked": gen.reads_as_asked, "settings": settings,
              "image": str(layout.image(case.case_id).relative_to(layout.out)),
              "label": str(layout.label(case.case_id).relative_to(layout.out))}
    write_text_atomic(d / "findings.json", json.dumps(record, indent=1) + "\n")


def mask_cases(args: argparse.Namespace, pipe: Any, abstractor: Any) -> tuple[list[Case], dict[str, MaskCase]]:
    """--masks: one case per label file, every file read, mapped and checked before anything is
    generated (PromptError lists every problem). Findings: read from the mask on the model grid,
    phase and liver from --report (default portal venous, normal)."""
    from shared.io.nifti import NiftiError, voxel_spacing
    from shared.label_maps import LabelMapError, identity_map, load_label_map
    from shared.text.volume import findings_from_volume

    problems: list[str] = []
    try:
        files = mask_files(args.masks)
        label_map = load_label_map(args.label_map, pipe.labels) if args.label_map else identity_map(pipe.labels)
        told = abstractor(args.report) if args.report else None
    except (NiftiError, LabelMapError, ValueError) as e:
        raise PromptError([str(e)]) from None
    cases, masks = [], {}
    for path in files:
        cid = case_id_of(path)
        if not CASE_ID.match(cid):
            problems.append(f"{path}: the file name gives case id {cid!r}, which must match [A-Za-z0-9_-]{{1,64}}")
            continue
        try:
            m = load_mask(path, label_map, pipe.ct_grid, tuple(voxel_spacing(pipe.ct_affine)))
        except (NiftiError, LabelMapError) as e:
            problems.append(str(e))
            continue
        f = findings_from_volume(m.model_labels, m.model_affine, table=pipe.labels)
        f = f.replace(phase=told.phase if told and told.phase != "unknown" else "portal_venous",
                      liver=told.liver if told else "normal")
        masks[cid] = m
        cases.append(Case(cid, args.report or f.summary(), f, case_seed(args.seed, cid), 0))
    if problems:
        raise PromptError(problems)
    return cases, masks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guidegen-generate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="prompt file: .txt, .jsonl or .csv")
    src.add_argument("--masks", help="mask -> CT: a label NIfTI or a folder of them (any orientation and "
                     "spacing; case ids = file names); stage 1 is skipped")
    p.add_argument("--report", default=None, help="with --masks: report text for every mask (its phase and "
                   "liver state; the rest is read from the mask). Default: portal venous, normal liver")
    p.add_argument("--label-map", default=None, help="with --masks: YAML mapping the masks' ids to the label "
                   "table by name, or a shipped map (totalsegmentator_v2); default: ids of labels.yaml")
    p.add_argument("--output-grid", choices=("input", "model"), default="input",
                   help="with --masks: write CT and labels on the mask's own grid, or on the model grid")
    p.add_argument("--out", required=True, help="output folder (created; a rerun resumes)")
    p.add_argument("--bundle", default=None, help="bundle.yaml (default: $GUIDEGEN_BUNDLE, else the checkout's)")
    p.add_argument("--n-per-prompt", type=int, default=1, help="cases per prompt (a line's 'n' wins)")
    p.add_argument("--seed", type=int, default=0, help="run seed (a line's 'seed' wins); per case with its id")
    p.add_argument("--stage1-steps", type=int, default=None, help="mask sampling steps (default: the bundle's)")
    p.add_argument("--stage1-guidance", type=float, default=None, help="mask CFG weight (default: the bundle's)")
    p.add_argument("--stage2-steps", type=int, default=None, help="CT sampling steps per slice (default: the bundle's)")
    p.add_argument("--stage2-guidance", type=float, default=None, help="CT CFG weight (default: the bundle's)")
    p.add_argument("--batch-size", type=int, default=4, help="cases sampled together")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 where it is faster on the device (shared.runtime.bf16_is_fast)")
    p.add_argument("--abstraction", choices=("lexicon", "llm"), default="lexicon",
                   help="report -> findings: the lexicon, or an OpenAI-compatible endpoint ($GUIDEGEN_LLM_URL)")
    p.add_argument("--format", choices=FORMATS, default="plain",
                   help="plain | nnunet (DatasetNNN_Name/imagesTr, labelsTr, dataset.json) | monai (+ datalist.json)")
    p.add_argument("--dataset-id", type=int, default=500, help="nnU-Net dataset id (1..999)")
    p.add_argument("--dataset-name", default="GuideGen", help="nnU-Net dataset name")
    p.add_argument("--no-preview", action="store_true", help="skip the preview PNGs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from shared.text import get_abstractor

    abstractor = get_abstractor(args.abstraction)
    for name in ("n_per_prompt", "batch_size"):
        if getattr(args, name) < 1:
            print(f"guidegen-generate: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    masks: dict[str, MaskCase] = {}
    if args.prompts:
        try:
            cases = read_prompts(args.prompts, args.n_per_prompt, args.seed, abstractor)
        except PromptError as e:
            print(f"guidegen-generate: {e}\nnothing was generated", file=sys.stderr)
            return 2
    from pipelines.bundle import BundleError, find_bundle
    from pipelines.pipeline import GuideGenPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipe = GuideGenPipeline.from_bundle(args.bundle, device=args.device, abstractor=abstractor)
    except (BundleError, ValueError, FileNotFoundError) as e:
        print(f"guidegen-generate: {e}", file=sys.stderr)
        return 2
    if args.masks:
        try:
            cases, masks = mask_cases(args, pipe, abstractor)
        except PromptError as e:
            print(f"guidegen-generate: {e}\nnothing was generated", file=sys.stderr)
            return 2
    out = Path(args.out)
    try:
        layout = make_layout(args.format, out, pipe.labels, args.dataset_id, args.dataset_name)
    except ValueError as e:
        print(f"guidegen-generate: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if (n := remove_temporaries(out)):
        log.info("removed %d temporary file(s) of an interrupted run", n)
    preview = not args.no_preview
    done = {c.case_id for c in cases if is_complete(layout, c.case_id, preview)}
    clashes = id_clashes(layout, [c for c in cases if c.case_id in done])
    if clashes:
        print(f"guidegen-generate: {len(clashes)} case id(s) already in {out} with another prompt or seed "
              "(use other ids or another --out):\n  " + "\n  ".join(clashes) + "\nnothing was generated",
              file=sys.stderr)
        return 2
    todo = [c for c in cases if c.case_id not in done]
    if len(todo) < len(cases):
        log.info("%d of %d cases already complete in %s: skipped", len(cases) - len(todo), len(cases), out)
    bf16 = {"auto": None, "bf16": True, "fp32": False}[args.precision]
    knobs = {"stage1_steps": args.stage1_steps, "stage1_guidance": args.stage1_guidance,
             "stage2_steps": args.stage2_steps, "stage2_guidance": args.stage2_guidance}
    settings = {"bundle": str(find_bundle(args.bundle).resolve()), "stage1": pipe.mask_sampler.sampling.override(
        steps=args.stage1_steps, guidance=args.stage1_guidance).to_dict(),
        "stage2": pipe.slice_generator.sampling.override(steps=args.stage2_steps,
                                                         guidance=args.stage2_guidance).to_dict(),
        "precision": args.precision, "device": args.device}
    tumor_ids = pipe.labels.tumor_ids
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="case", desc="generating", disable=None)
    for s in range(0, len(todo), args.batch_size):
        chunk = todo[s : s + args.batch_size]
        t0 = time.perf_counter()
        gens = [torch.Generator().manual_seed(c.seed) for c in chunk]
        if masks:
            labels = torch.from_numpy(np.stack([masks[c.case_id].model_labels for c in chunk]))
            results = pipe.ct_from_masks(labels, [c.findings for c in chunk], gens, knobs["stage2_steps"],
                                         knobs["stage2_guidance"], bf16)
            if args.output_grid == "input":
                for case, gen in zip(chunk, results, strict=True):
                    gen.ct, gen.labels = to_input_grid(masks[case.case_id], gen.ct, gen.labels)
                    gen.affine = masks[case.case_id].affine
        else:
            results = pipe([c.findings for c in chunk], gens, bf16=bf16, **knobs)
        for case, gen in zip(chunk, results, strict=True):
            write_case_files(layout, case, gen, settings, preview, tumor_ids)
            done.add(case.case_id)
        write_manifest(layout, cases, done)
        bar.update(len(chunk))
        bar.set_postfix(s_per_case=f"{(time.perf_counter() - t0) / len(chunk):.1f}")
    bar.close()
    n_done = write_manifest(layout, cases, done)
    elapsed = time.perf_counter() - start
    as_asked = sum(json.loads((layout.case_dir(c.case_id) / "findings.json").read_text())["reads_as_asked"]
                   for c in cases)
    print(f"{len(todo)} case(s) generated, {len(cases) - len(todo)} already there, in {elapsed:.1f} s"
          + (f" ({elapsed / len(todo):.1f} s per case)" if todo else ""))
    print(f"{n_done} case(s) in {out / MANIFEST}; {as_asked} of {len(cases)} of this prompt file read back "
          f"as asked (per field: cases/*/findings.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
