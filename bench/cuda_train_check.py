"""Training on a GPU: each stage's tiny config fitted through its CLI on CUDA in bf16-mixed, then
the trained networks sample on the GPU (CI has no GPU, so this script is the check).

Builds the 10-case test phantom (32 x 32 x 16), then: (1) stage 1 `fit` (tiny config,
`--trainer.accelerator gpu --trainer.precision bf16-mixed`), its EMA sampler drawing 2 masks on
the GPU; (2) the stage-2 VAE `fit` likewise, exported; (3) the LDM `fit` on that VAE's latents,
exported, reloaded with `load_slice_ldm` / `load_vae` and generating 2 volumes from phantom masks
on the GPU. Reports steps done, the final logged losses (must be finite), the trainer's device and
the sampled outputs' checks as JSON.

    python bench/cuda_train_check.py --out bench/results/cuda_train_check.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.data.build import build_dataset  # noqa: E402
from shared.data.manifest import read_manifest  # noqa: E402
from shared.io.nifti import read_nifti  # noqa: E402
from stage1_mask import cli as cli1  # noqa: E402
from stage1_mask.sampler import sample_masks  # noqa: E402
from stage2_ct import cli as cli2  # noqa: E402
from stage2_ct.generator import load_slice_ldm  # noqa: E402

log = logging.getLogger("cuda_train_check")
TEXTS = ["tumor: sigmoid colon 40 mm. spleen: normal. phase: portal venous.",
         "tumor: rectum 30 mm. spleen: enlarged. phase: non-contrast."]


def _fit_summary(run, steps_wanted: int) -> dict:
    metrics = {k: float(v) for k, v in run.trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    return {"global_step": int(run.trainer.global_step), "steps_wanted": steps_wanted,
            "precision": str(run.trainer.precision), "root_device": run.trainer.strategy.root_device.type,
            "metrics": metrics, "metrics_finite": bool(metrics) and all(math.isfinite(v) for v in metrics.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/cuda_train_check.json"))
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device("cuda" if a.accelerator == "gpu" else "cpu")
    work = Path(tempfile.mkdtemp(prefix="cuda_train_"))
    manifest = build_dataset(work / "phantom", n_cases=10, jobs=4, seed=0, grid="small")
    trainer = ["--trainer.accelerator", a.accelerator, "--trainer.precision", a.precision,
               "--trainer.max_steps", str(a.steps), "--trainer.max_epochs", "100"]
    res: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                 "torch": torch.__version__}

    c1 = ROOT / "stage1_mask/configs"
    run = cli1.main(args=["fit", "-c", str(c1 / "phantom.yaml"), "-c", str(c1 / "tiny.yaml"),
                          "--data.manifest", str(manifest), "--trainer.default_root_dir", str(work / "s1"),
                          *trainer])
    sampler = run.model.ema_model.to(device).eval()
    probs = sample_masks(sampler, TEXTS, torch.Generator(device).manual_seed(0), steps=4, guidance=2.0,
                         grid=[16, 16, 8])
    res["stage1"] = {**_fit_summary(run, a.steps), "probs_device": probs.device.type,
                     "probs_finite_sum_one": bool(torch.isfinite(probs).all()
                                                  and torch.allclose(probs.sum(1), torch.ones_like(probs[:, 0]),
                                                                     atol=1e-3))}

    c2 = ROOT / "stage2_ct/configs"
    run = cli2.main(args=["fit", "-c", str(c2 / "vae/phantom.yaml"), "-c", str(c2 / "vae/tiny.yaml"),
                          f"--data.manifest={manifest}", f"--model.init_args.export_path={work / 'vae'}",
                          f"--trainer.default_root_dir={work / 'vae_run'}", *trainer])
    res["vae"] = _fit_summary(run, a.steps)
    run = cli2.main(args=["fit", "-c", str(c2 / "ldm/phantom.yaml"), "-c", str(c2 / "ldm/tiny.yaml"),
                          f"--data.manifest={manifest}", f"--model.init_args.vae_path={work / 'vae'}",
                          f"--model.init_args.export_path={work / 'ldm'}",
                          f"--trainer.default_root_dir={work / 'ldm_run'}", *trainer])
    res["ldm"] = _fit_summary(run, a.steps)

    module = load_slice_ldm(work / "ldm").to(device).eval()
    rows = read_manifest(manifest)[:2]
    masks = torch.stack([torch.from_numpy(read_nifti(r.label)[0]).long() for r in rows]).to(device)
    hu = module.generate(masks, TEXTS, torch.Generator(device).manual_seed(0), steps=2)
    res["generate"] = {"shape_ok": list(hu.shape) == list(masks.shape), "device": hu.device.type,
                       "finite_in_range": bool(torch.isfinite(hu).all() and hu.min() >= -1000 and hu.max() <= 1000)}
    log.info("%s", json.dumps(res, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
