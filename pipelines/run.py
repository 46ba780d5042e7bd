"""`guidegen-generate`: reports -> CT + label volumes with a bundle, written as a dataset.

    guidegen-generate --prompts reports.txt --out outputs/synth [--n-per-prompt 4] [--seed 0]
        [--bundle weights/bundle.yaml] [--stage1-steps 25] [--stage2-guidance 1.05] [--batch-size 4]

Per case, under OUT/cases/ID/: `ct.nii.gz` (int16 HU), `labels.nii.gz` (uint8, the bundle's label
table), both on one RAS geometry; `findings.json` (the prompt, what it asks for, what the
generated volumes read back as, the seed and settings); `preview.png` (axial slices through the
tumours when there are any, and a coronal one). OUT/manifest.jsonl lists the finished cases in
prompt order in the project's manifest schema (split "train"), so a generated set feeds straight
into training and evaluation.

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

import torch
from tqdm import tqdm

from pipelines.prompts import Case, PromptError, read_prompts
from shared.io.atomic import write_text_atomic
from shared.io.nifti import write_case
from shared.io.preview import focus_axial_slices, save_preview

log = logging.getLogger("guidegen.generate")

MANIFEST = "manifest.jsonl"
CASE_FILES = ("ct.nii.gz", "labels.nii.gz", "findings.json")


def case_dir(out: Path, case_id: str) -> Path:
    return out / "cases" / case_id


def is_complete(out: Path, case_id: str, preview: bool) -> bool:
    d = case_dir(out, case_id)
    return all((d / f).is_file() for f in CASE_FILES + (("preview.png",) if preview else ()))


def remove_temporaries(out: Path) -> int:
    """Delete temporary files of atomic writes (`.NAME.*.tmp*`) a killed run left behind."""
    stray = [p for p in out.glob("**/.*.tmp*") if p.is_file()]
    for p in stray:
        p.unlink()
    return len(stray)


def manifest_line(case: Case) -> str:
    """The case's manifest row (paths relative to OUT)."""
    return json.dumps({"case_id": case.case_id, "image": f"cases/{case.case_id}/ct.nii.gz",
                       "label": f"cases/{case.case_id}/labels.nii.gz", "report": case.report,
                       "split": "train", "findings": case.findings.to_dict()}) + "\n"


def write_manifest(out: Path, cases: list[Case], done: set[str]) -> int:
    """OUT/manifest.jsonl with the complete cases (`done`) in prompt order; returns their number."""
    rows = [manifest_line(c) for c in cases if c.case_id in done]
    write_text_atomic(out / MANIFEST, "".join(rows))
    return len(rows)


def write_case_files(out: Path, case: Case, gen: Any, settings: dict[str, Any], preview: bool,
                     tumor_ids: list[int]) -> None:
    """CT, labels, preview, then findings.json (the completion mark), each atomically."""
    d = case_dir(out, case.case_id)
    write_case(d / "ct.nii.gz", d / "labels.nii.gz", gen.ct, gen.labels, gen.affine)
    if preview:
        ks = focus_axial_slices(gen.labels, tumor_ids, 4)
        save_preview(d / "preview.png", gen.ct, gen.labels, gen.affine, axial_slices=ks,
                     title=f"{case.case_id}: {case.report[:200]}")
    record = {"case_id": case.case_id, "prompt": case.report, "prompt_line": case.line, "seed": case.seed,
              "asked": case.findings.to_dict(), "summary": case.findings.summary(),
              "readback": gen.readback.to_dict(), "agreement": gen.agreement,
              "reads_as_asked": gen.reads_as_asked, "settings": settings}
    write_text_atomic(d / "findings.json", json.dumps(record, indent=1) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guidegen-generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", required=True, help="prompt file: .txt, .jsonl or .csv")
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (n := remove_temporaries(out)):
        log.info("removed %d temporary file(s) of an interrupted run", n)
    preview = not args.no_preview
    done = {c.case_id for c in cases if is_complete(out, c.case_id, preview)}
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
        results = pipe([c.findings for c in chunk], gens, bf16=bf16, **knobs)
        for case, gen in zip(chunk, results, strict=True):
            write_case_files(out, case, gen, settings, preview, tumor_ids)
            done.add(case.case_id)
        write_manifest(out, cases, done)
        bar.update(len(chunk))
        bar.set_postfix(s_per_case=f"{(time.perf_counter() - t0) / len(chunk):.1f}")
    bar.close()
    n_done = write_manifest(out, cases, done)
    elapsed = time.perf_counter() - start
    as_asked = sum(json.loads((case_dir(out, c.case_id) / "findings.json").read_text())["reads_as_asked"]
                   for c in cases)
    print(f"{len(todo)} case(s) generated, {len(cases) - len(todo)} already there, in {elapsed:.1f} s"
          + (f" ({elapsed / len(todo):.1f} s per case)" if todo else ""))
    print(f"{n_done} case(s) in {out / MANIFEST}; {as_asked} of {n_done} read back as asked "
          f"(per field: cases/*/findings.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
