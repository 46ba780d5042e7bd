"""Per-slice spread of organ levels: generated (the shipped pair, slice after slice) vs real.

    .venv/bin/python bench/organ_slice_spread.py     # ~4.5 min on 2 cores (fp32)

All 16 test cases are generated at the shipped defaults (seed 0, one batch). For each solid organ
and each axial slice with >= 5 eroded voxels: the slice's mean HU minus the phantom expectation on
the same voxels, for the generated and the real volume, split into the organ's first two slices
(in generation order), its last two and the middle. Mean and SD over slices and cases.
Writes bench/results/organ_onset_shipped_test.json.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.data.manifest import read_manifest  # noqa: E402
from shared.labels import default_labels  # noqa: E402
from stage2_ct.data import load_cases  # noqa: E402
from stage2_ct.eval_metrics import eroded  # noqa: E402
from stage2_ct.evaluate import phantom_ct, phantom_grid  # noqa: E402
from stage2_ct.generate import generate_volume  # noqa: E402
from stage2_ct.ldm_module import load_slice_ldm  # noqa: E402

torch.set_num_threads(2)
t = default_labels()
man = Path('data/phantom/manifest.jsonl')
m = load_slice_ldm('weights/stage2_ldm_phantom')
s = load_cases(man, 'test', 16, t, (2,2,2))
f = {e.case_id: e.findings for e in read_manifest(man, split='test')}
vols = generate_volume(m, m.vae, s.labels, s.summaries, torch.Generator().manual_seed(0)).numpy()
grid = phantom_grid(man.parent)
acc = {}
for i in range(len(s.case_ids)):
    lab = s.labels[i].numpy()
    exp = phantom_ct(man.parent, s.case_ids[i], f[s.case_ids[i]], grid, expectation=True)
    real = s.hu[i].numpy().astype(np.float32)
    for o in ('kidney_right', 'kidney_left', 'pancreas', 'spleen', 'liver'):
        e = eroded(lab, t.id_of(o))
        zs = [k for k in range(e.shape[-1]) if e[..., k].sum() >= 5]
        if len(zs) < 6:
            continue
        for part, ks in (('first2', zs[:2]), ('middle', zs[2:-2]), ('last2', zs[-2:])):
            for src, v in (('gen', vols[i]), ('real', real)):
                d = [float(v[..., k][e[..., k]].mean() - exp[..., k][e[..., k]].mean()) for k in ks]
                acc.setdefault((o, part, src), []).extend(d)
out = {}
for (o, part, src), d in sorted(acc.items()):
    out[f"{o}/{part}/{src}"] = {"mean": round(float(np.mean(d)), 1), "sd": round(float(np.std(d)), 1), "n": len(d)}
    print(o, part, src, f"mean {np.mean(d):+.1f} sd {np.std(d):.1f} n {len(d)}")
Path('bench/results/organ_onset_shipped_test.json').write_text(json.dumps(out, indent=1) + "\n")
