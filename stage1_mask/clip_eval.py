"""Zero-shot alignment of the report <-> anatomy CLIP: which canonical summary does a mask match?

For each case and each probed field, the candidate texts are the case's own `Findings.summary()`
with only that field changed to every value it can take; the prediction is the candidate most
similar to the mask embedding. Fields a label volume can decide:

- `tumor_site`: cases with exactly one (sited) tumour; 5 candidates, one per site in SITES, same size.
- `spleen` (normal / enlarged), `kidney_left` and `kidney_right` (present / absent, the other
  side as in the case), `bladder` (normal / distended): every case.

Liver attenuation and contrast phase live in the CT, not in the mask, so they are not probed.
Also reported: `retrieval` (mask -> own summary among all the split's summaries, top-1).

    python -m stage1_mask.clip_eval --artifact weights/text_clip_phantom \
        --manifest data/phantom/manifest.jsonl --split test [--markdown runs/clip/zero_shot.md]

Loads `ARTIFACT.*` (the frozen TextEncoder) and `ARTIFACT_mask.*` (the MaskEncoder); prints JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shared.findings import BLADDER, KIDNEY, SITES, SPLEEN, Findings, Tumor

log = logging.getLogger(__name__)

def _site_probe(f: Findings) -> tuple[list[Findings], int] | None:
    if len(f.tumors) != 1 or f.tumors[0].site is None:
        return None
    t = f.tumors[0]
    return [f.replace(tumors=(Tumor(s, t.size_mm),)) for s in SITES], SITES.index(t.site)


def _choice_probe(name: str, values: Sequence[str]) -> Callable[[Findings], tuple[list[Findings], int]]:
    return lambda f: ([f.replace(**{name: v}) for v in values], list(values).index(getattr(f, name)))


PROBES: dict[str, Callable[[Findings], tuple[list[Findings], int] | None]] = {
    "tumor_site": _site_probe,
    "spleen": _choice_probe("spleen", SPLEEN),
    "kidney_left": _choice_probe("kidney_left", KIDNEY),
    "kidney_right": _choice_probe("kidney_right", KIDNEY),
    "bladder": _choice_probe("bladder", BLADDER),
}


@torch.no_grad()
def encode_texts(text_encoder: torch.nn.Module, texts: list[str], chunk: int = 256) -> torch.Tensor:
    """Normalised pooled text embeddings (N, E), encoded in chunks."""
    out = [text_encoder.encode(texts[i:i + chunk])[2] for i in range(0, len(texts), chunk)]
    return F.normalize(torch.cat(out).float(), dim=-1)


@torch.no_grad()
def zero_shot(text_encoder: torch.nn.Module, mask_f: torch.Tensor, findings: Sequence[Findings]) -> dict[str, Any]:
    """Per probed field: accuracy, n, chance, balanced accuracy and the confusion (truth -> predicted).

    mask_f: (N, E) L2-normalised mask embeddings of the cases whose Findings are `findings`.
    """
    was_training = text_encoder.training
    text_encoder.eval()
    mask_f = F.normalize(mask_f.float(), dim=-1)
    results: dict[str, Any] = {}
    for name, probe in PROBES.items():
        rows = [(i, *p) for i, f in enumerate(findings) if (p := probe(f)) is not None]
        if not rows:
            results[name] = {"accuracy": float("nan"), "n": 0}
            continue
        k = len(rows[0][1])
        text_f = encode_texts(text_encoder, [c.summary() for _, cands, _ in rows for c in cands])
        text_f = text_f.view(len(rows), k, -1)  # (n, k, E)
        idx = torch.tensor([i for i, _, _ in rows], device=mask_f.device)
        truth = torch.tensor([t for _, _, t in rows], device=mask_f.device)
        pred = torch.einsum("ne,nke->nk", mask_f[idx], text_f.to(mask_f.device)).argmax(1)  # (n,)
        confusion = torch.zeros(k, k, dtype=torch.long)
        for t, p in zip(truth.tolist(), pred.tolist(), strict=True):
            confusion[t, p] += 1
        present = confusion.sum(1) > 0
        recall = confusion.diag()[present].float() / confusion.sum(1)[present].float()
        results[name] = {"accuracy": round(float((pred == truth).float().mean()), 4), "n": len(rows),
                         "chance": round(1.0 / k, 4), "balanced_accuracy": round(float(recall.mean()), 4),
                         "confusion": confusion.tolist()}
    text_encoder.train(was_training)
    return results


@torch.no_grad()
def retrieval_top1(text_encoder: torch.nn.Module, mask_f: torch.Tensor, findings: Sequence[Findings]) -> float:
    """Mask -> text top-1 among the distinct summaries of the set (ties by identical text count as hits)."""
    summaries = [f.summary() for f in findings]
    distinct = list(dict.fromkeys(summaries))
    text_f = encode_texts(text_encoder, distinct).to(mask_f.device)
    pred = (F.normalize(mask_f.float(), dim=-1) @ text_f.T).argmax(1)
    truth = torch.tensor([distinct.index(s) for s in summaries], device=mask_f.device)
    return round(float((pred == truth).float().mean()), 4)


def evaluate(artifact: str | Path, manifest: str | Path, split: str = "test",
             mask_artifact: str | Path | None = None, grid: Sequence[int] | None = None,
             batch_size: int = 16) -> dict[str, Any]:
    """Load both encoders, embed the split's low-res masks, run the zero-shot probes."""
    from shared.io.artifact import artifact_stem, load_component
    from shared.labels import default_labels
    from stage1_mask.data import load_cases

    stem = artifact_stem(artifact)
    text_encoder = load_component(stem).eval()
    mask_encoder = load_component(mask_artifact or stem.with_name(stem.name + "_mask")).eval()
    grid = list(grid or mask_encoder.artifact_metadata.get("grid") or (64, 64, 40))
    cases = [c for c in load_cases(manifest, grid, default_labels()) if c.split == split]
    if not cases:
        raise ValueError(f"{manifest}: no cases in split {split!r}")
    with torch.no_grad():
        mask_f = torch.cat([
            F.normalize(mask_encoder(torch.stack([torch.from_numpy(c.labels).long() for c in
                                                  cases[i:i + batch_size]])), dim=-1)
            for i in range(0, len(cases), batch_size)])
    findings = [c.findings for c in cases]
    return {"artifact": str(stem), "manifest": str(manifest), "split": split, "cases": len(cases),
            "grid": grid, "zero_shot": zero_shot(text_encoder, mask_f, findings),
            "retrieval_top1": retrieval_top1(text_encoder, mask_f, findings)}


def markdown_table(result: dict[str, Any]) -> str:
    lines = [f"Zero-shot alignment, `{result['artifact']}` on `{result['manifest']}` "
             f"split `{result['split']}` ({result['cases']} cases)", "",
             "| field | accuracy | balanced acc. | chance | n |", "|---|---|---|---|---|"]
    for name, s in result["zero_shot"].items():
        if s["n"]:
            lines.append(f"| {name} | {s['accuracy']:.3f} | {s['balanced_accuracy']:.3f} | "
                         f"{s['chance']:.3f} | {s['n']} |")
    lines.append(f"| retrieval (top-1 among distinct summaries) | {result['retrieval_top1']:.3f} | | | "
                 f"{result['cases']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default="weights/text_clip_phantom", help="text-encoder artifact stem")
    parser.add_argument("--mask-artifact", default=None, help="mask-encoder stem (default ARTIFACT_mask)")
    parser.add_argument("--manifest", default="data/phantom/manifest.jsonl")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--grid", type=int, nargs=3, default=None, help="low-res grid (default: artifact's)")
    parser.add_argument("--markdown", default=None, help="markdown table path (default runs/clip/zero_shot_SPLIT.md)")
    parser.add_argument("--floor", type=float, default=None, help="exit 1 if tumor_site accuracy is below")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = evaluate(args.artifact, args.manifest, args.split, args.mask_artifact, args.grid)
    result["seconds"] = round(time.perf_counter() - start, 1)
    md = Path(args.markdown or f"runs/clip/zero_shot_{args.split}.md")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown_table(result))
    print(json.dumps(result))  # CLI output: one JSON line
    log.info("markdown table written to %s", md)
    site = result["zero_shot"]["tumor_site"]["accuracy"]
    if args.floor is not None and not site >= args.floor:
        log.error("tumor_site zero-shot accuracy %.3f is below the floor %.3f", site, args.floor)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
