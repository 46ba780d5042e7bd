"""How strongly a slice LDM with per-volume class levels (stage2_ct.levels) follows them.

    .venv/bin/python bench/level_response.py [--ldm runs/stage2/ldm_levels_ft/artifact/stage2_ldm_phantom] \
        [--delta 3] [--case 0] [--phase portal_venous] [--out bench/results/level_response.json]

The `--case`-th test case of the phase is generated twice, slice after slice over the z range of
its right kidney (+-2 slices), same seed, once with every class at +delta and once at -delta
standard deviations of its report group (`generate_volume(levels=...)`). Per solid organ: the
generated level difference on the eroded mask (HU) against what the levels ask for,
2 delta x the group's std in the level bank. A ratio of 1 = the model follows the levels exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", default="data/phantom/manifest.jsonl")
    p.add_argument("--vae", default="weights/stage2_vae_phantom")
    p.add_argument("--ldm", default="runs/stage2/ldm_levels_ft/artifact/stage2_ldm_phantom")
    p.add_argument("--phase", default="portal_venous", choices=("portal_venous", "non_contrast"))
    p.add_argument("--case", type=int, default=0)
    p.add_argument("--delta", type=float, default=3.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "level_response.json"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from shared.labels import default_labels
    from stage2_ct.data import load_cases
    from stage2_ct.eval_metrics import SOLID, eroded
    from stage2_ct.generate import generate_volume
    from stage2_ct.ldm_module import load_slice_ldm
    from stage2_ct.levels import level_key

    table = default_labels()
    module = load_slice_ldm(args.ldm, vae_path=args.vae)
    if not module.hparams.get("organ_levels"):
        p.error(f"{args.ldm} has no per-volume levels (organ_levels)")
    store = load_cases(args.manifest, "test", 16, table, (2, 2, 2))
    phase_text = args.phase.replace("_", " ")
    i = [j for j, s in enumerate(store.summaries) if f"phase: {phase_text}" in s][args.case]
    lab = store.labels[i]
    zs = np.flatnonzero(eroded(lab.numpy(), table.id_of("kidney_right")).any((0, 1)))
    z0, z1 = max(0, zs[0] - 2), zs[-1] + 3
    masks = lab[..., z0:z1][None].repeat(2, 1, 1, 1)
    levels = torch.zeros(2, module.hparams.num_classes)
    levels[0], levels[1] = args.delta, -args.delta
    with torch.no_grad():
        hu = generate_volume(module, module.vae, masks, [store.summaries[i]] * 2, torch.Generator().manual_seed(0),
                             levels=levels).numpy()
    group = module.level_bank.groups[level_key(store.summaries[i])]
    rows = {}
    for name in SOLID:
        cid = table.id_of(name)
        m = eroded(lab.numpy(), cid)[..., z0:z1]
        if m.sum() < 20:
            continue
        got = float(hu[0][m].mean() - hu[1][m].mean())
        asked = 2 * args.delta * group["std"][cid]
        rows[name] = {"generated_diff_hu": round(got, 2), "asked_diff_hu": round(asked, 2),
                      "ratio": round(got / asked, 2)}
        logging.info("%s: %+.1f HU generated vs %+.1f asked (x%.2f)", name, got, asked, got / asked)
    out = {"ldm": args.ldm, "case": store.case_ids[i], "slices": [int(z0), int(z1)], "delta": args.delta,
           "organs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
