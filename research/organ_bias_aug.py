"""Organ-level bias of the slice LDM against its inference previous-slice augmentation level,
with the real previous slice given (teacher forcing), so that the sampler's own drift along z is
out of the picture and every slice is an independent sample.

    .venv/bin/python bench/organ_bias_aug.py [--phase portal_venous] [--cases 6] \
        [--runs 10,100 10,200 50,100 10,-1 10,250,1.05] [--split test] [--autoregressive] [--out PATH] [--threads 2]

Picking the inference defaults of a new LDM (`aug_t`, `guidance`) without looking at the test
cases: `--split val`, both phases, several `steps,level,guidance` runs.

For the first `--cases` cases of the split and phase: every axial slice k that holds an eroded kidney,
pancreas or spleen voxel is sampled from the posterior-mean latent of the real slice k-1 (zeros
for k = 0), noised to the run's level (-1 = clean) as in `generate_volume`, with the case's mask
and summary, the run's guidance (1 when not given) and number of DDIM steps. Per organ: the mean over cases of
(generated - phantom expectation) on the eroded voxels (HU; `stage2_ct.evaluate` definitions),
and the SD of the per-case means. `--autoregressive` adds the same cases generated as the pipeline
does (`generate_volume`, the module's defaults, seed 0): the difference to a teacher-forced run at
those settings is what sampling along z adds. A model with per-volume class levels gets one draw
from its level bank per case (seed 0), the same in every run.
Writes bench/results/organ_bias_aug_<phase>.json (test split) or organ_bias_aug_<split>_<phase>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORGANS = ("kidney_left", "kidney_right", "pancreas", "spleen")
log = logging.getLogger("organ_bias_aug")


@torch.no_grad()
def sample_slices(module, vae, items, store, latents, steps: int, level: int, guidance: float = 1.0,
                  chunk: int = 48, case_levels: dict | None = None) -> dict:
    """{(case index, k): (X, Y) HU} for every (case, k) in items, seeded 0; `case_levels`: each
    case's per-volume class levels (K,) for a module with organ_levels."""
    from shared.diffusion import sample_loop
    from stage2_ct.conditioning import augment_prev, mask_to_latent_grid, trim_text_inputs

    hp, sch = module.hparams, module.scheduler
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    nz = store.labels.shape[-1]
    out = {}
    for s in range(0, len(items), chunk):
        part = items[s : s + chunk]
        b, (c, h, w) = len(part), latents[part[0][0]].shape[1:]
        seg = mask_to_latent_grid(torch.stack([store.labels[i][..., k] for i, k in part]).long(), (h, w),
                                  hp.num_classes)
        prev = torch.stack([latents[i][k - 1] if k > 0 else torch.zeros(c, h, w) for i, k in part])
        levels = torch.full((b,), level, dtype=torch.long)
        texts = [module.encode_text([store.summaries[i] for i, _ in part])]
        if guidance != 1.0:
            texts.append(module.null_text(b))
        text, *null = trim_text_inputs(*texts)
        extra = {"prev": augment_prev(sch, prev, levels, g), "seg": seg, "level": levels,
                 "position": torch.tensor([[k / max(1, nz - 1)] for _, k in part])}
        if case_levels is not None:
            extra["levels"] = torch.stack([case_levels[i] for i, _ in part])
        x_t = sch.init_noise((b, c, h, w), generator=g, device=torch.device("cpu"))
        z, _ = sample_loop(module.denoiser, sch, x_t, generator=g, guidance=guidance, cond={**text, **extra},
                           uncond={**null[0], **extra} if null else None)
        for key, hu in zip(part, vae.decode_hu(z)[:, 0].numpy(), strict=True):
            out[key] = hu
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", default="data/phantom/manifest.jsonl")
    p.add_argument("--vae", default="weights/stage2_vae_phantom")
    p.add_argument("--ldm", default="weights/stage2_ldm_phantom")
    p.add_argument("--phase", default="portal_venous", choices=("portal_venous", "non_contrast"))
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--runs", nargs="+", default=["10,100", "10,200"],
                   help="steps,level[,guidance] (level -1: the clean previous slice; guidance 1 if left out)")
    p.add_argument("--split", default="test", help="manifest split of the cases (val: for tuning)")
    p.add_argument("--out", default=None, help="results JSON (default: bench/results/organ_bias_aug_...json)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--autoregressive", action="store_true",
                   help="also generate the cases' whole volumes (generate_volume at the module's defaults, seed 0)")
    args = p.parse_args()
    runs = []  # (steps, level, guidance), checked before any model is loaded
    for run in args.runs:
        try:
            steps, level, *rest = run.split(",")
            runs.append((int(steps), int(level), float(rest[0]) if rest else 1.0))
        except ValueError:
            p.error(f"--runs {run!r}: expected steps,level[,guidance], e.g. 10,250,1.05")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from shared.data.manifest import read_manifest
    from shared.data.transforms import hu_to_model
    from shared.labels import default_labels
    from stage2_ct.data import load_cases
    from stage2_ct.eval_metrics import eroded
    from stage2_ct.evaluate import phantom_ct, phantom_grid
    from stage2_ct.ldm_module import load_slice_ldm
    from stage2_ct.vae_module import load_vae

    manifest, table = Path(args.manifest), default_labels()
    store = load_cases(manifest, args.split, 16, table, (2, 2, 2))
    findings = {e.case_id: e.findings for e in read_manifest(manifest, split=args.split)}
    cases = [i for i, c in enumerate(store.case_ids) if findings[c].phase == args.phase][: args.cases]
    vae = load_vae(args.vae)
    module = load_slice_ldm(args.ldm, vae_path=args.vae).eval()
    grid = phantom_grid(manifest.parent)
    masks, expect, latents, items = {}, {}, {}, []
    with torch.no_grad():
        for i in cases:
            lab = store.labels[i].numpy()
            masks[i] = {o: eroded(lab, table.id_of(o)) for o in ORGANS}
            expect[i] = phantom_ct(manifest.parent, store.case_ids[i], findings[store.case_ids[i]], grid,
                                   expectation=True)
            latents[i] = vae.encode_latents(hu_to_model(store.hu[i].permute(2, 0, 1)[:, None].float()))
            ks = np.flatnonzero(np.any([m.any(axis=(0, 1)) for m in masks[i].values()], axis=0))
            items += [(i, int(k)) for k in ks]
    log.info("%d cases, %d slices", len(cases), len(items))
    from stage2_ct.generate import volume_levels

    drawn = volume_levels(module, [store.summaries[i] for i in cases], "bank", torch.Generator().manual_seed(0))
    case_levels = None if drawn is None else dict(zip(cases, drawn, strict=True))  # one draw per case
    def bias_of(gen: dict) -> dict:
        """Per organ: mean over cases of (generated - expectation) on the eroded voxels, and the SD
        of the per-case means (HU)."""
        bias = {}
        for organ in ORGANS:
            per_case = []
            for i in cases:
                sel = [(k, masks[i][organ][..., k]) for ii, k in items if ii == i]
                n = sum(int(m.sum()) for _, m in sel)
                if n >= 20:
                    diff = sum(float((gen[(i, k)][m] - expect[i][..., k][m]).sum()) for k, m in sel)
                    per_case.append(diff / n)
            bias[organ] = ({"bias_hu": round(float(np.mean(per_case)), 2), "case_sd_hu": round(float(np.std(per_case)), 2)}
                           if per_case else None)
        return bias

    results = []
    for steps, level, guidance in runs:
        bias = bias_of(sample_slices(module, vae, items, store, latents, steps, level, guidance,
                                     case_levels=case_levels))
        log.info("steps %d level %d guidance %g: %s", steps, level, guidance, bias)
        results.append({"steps": steps, "level": level, "guidance": guidance, "bias_hu": bias})
    if args.autoregressive:  # the same cases generated slice after slice, as the pipeline does
        from stage2_ct.generate import generate_volume, sampling_settings

        with torch.no_grad():
            vols = generate_volume(module, vae, store.labels[cases], [store.summaries[i] for i in cases],
                                   generator=torch.Generator().manual_seed(0),
                                   levels="bank" if drawn is None else drawn).numpy()
        row = {i: j for j, i in enumerate(cases)}
        bias = bias_of({(i, k): vols[row[i]][..., k] for i, k in items})
        settings = sampling_settings(module.hparams)
        level = settings.pop("aug_t")
        log.info("autoregressive, the module's defaults: %s", bias)
        results.append({"autoregressive": True, **settings, "level": level, "bias_hu": bias})
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "split": args.split, "phase": args.phase,
           "cases": [store.case_ids[i] for i in cases], "slices": len(items), "ldm": args.ldm, "runs": results}
    name = f"organ_bias_aug_{args.phase}.json" if args.split == "test" else f"organ_bias_aug_{args.split}_{args.phase}.json"
    path = Path(args.out) if args.out else ROOT / "bench" / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
