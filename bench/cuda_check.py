"""CUDA / bf16 path check and GPU timings of both samplers (phantom-size networks, random weights:
the speed and the device handling do not depend on the training).

Checks: (1) one fp32 forward of each network gives the same output on the CPU and the GPU (TF32
off); (2) `sample_masks` on the GPU with bf16 autocast and size control returns finite
probabilities and the reported tumour voxel count ("argmax" mode; the largest difference is
reported: float rounding at the threshold can move a voxel or two); (3) `SliceGenerator.generate`
on the GPU returns finite HU in [-1000, 1000] of the mask's shape, on the masks' device; (4) a CPU
generator drives GPU sampling with the CPU's draws (fp32: labels agree, HU close to the CPU run's);
(5) organ level harmonisation (`stage2_ct.harmonize`) gives the same HU on the GPU as on the CPU.
Timings: seconds per mask and per 80-slice volume at the default steps, batch 8, with CFG.

    python bench/cuda_check.py --out bench/results/cuda_check.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.labels import default_labels  # noqa: E402
from shared.runtime import bf16_is_fast  # noqa: E402
from shared.vae.autoencoder import SliceAutoencoder  # noqa: E402
from stage1_mask.sampler import MaskSampler, sample_masks  # noqa: E402
from stage1_mask.size import target_tumor_voxels  # noqa: E402
from stage2_ct.harmonize import harmonize_levels, organ_ids  # noqa: E402
from stage2_ct.ldm_module import SliceLDMModule  # noqa: E402

log = logging.getLogger("cuda_check")
TEXT = dict(text_cfg=dict(width=128, heads=4, layers=2), embed_dim=128)
PROMPTS = [f"tumor: {site} 40 mm. spleen: normal. liver: normal. kidneys: both present. "
           "bladder: normal. phase: portal venous." for site in
           ("sigmoid colon", "rectum", "ascending colon", "transverse colon", "descending colon",
            "sigmoid colon", "rectum", "ascending colon")]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _max_diff(net_fn, inputs: dict, device: torch.device) -> float:
    """max |out_cpu - out_gpu| / max |out_cpu| of one fp32 forward."""
    with torch.no_grad():
        a = net_fn("cpu", {k: v.cpu() if torch.is_tensor(v) else v for k, v in inputs.items()})
        b = net_fn(device, {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()})
    return float((a - b.cpu()).abs().max() / a.abs().max().clamp_min(1e-12))


def stage1(device: torch.device, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    sampler = MaskSampler(12, unet_preset="stage1_phantom", text_encoder=TEXT).eval()
    sampler.artifact_metadata = {"spacing": [6.0, 6.0, 10.0]}
    grid = [64, 64, 40]
    x = torch.nn.functional.one_hot(torch.randint(0, 12, (2, *grid)), 12).movedim(-1, 1).float()
    ctx = sampler.encode(PROMPTS[:2])

    def fwd(dev, inp):
        sampler.to(dev)
        return sampler(inp["x"], inp["t"], context=inp["c"], context_mask=inp["m"], cond_vector=inp["p"])

    rel = _max_diff(fwd, {"x": x, "t": torch.tensor([10, 900]), "c": ctx[0], "m": ctx[1], "p": ctx[2]}, device)
    sampler.to(device)
    texts = PROMPTS[:batch]
    probs = sample_masks(sampler, texts, torch.Generator(device).manual_seed(0), steps=2, guidance=3.0,
                         grid=grid, size_control="argmax")  # warm-up + exact-count check
    counts = (probs.argmax(1) == 11).flatten(1).sum(1).cpu()
    want = target_tumor_voxels(texts, [6.0, 6.0, 10.0]).nansum(1).round().long()
    _sync(device)
    t0 = time.perf_counter()
    probs = sample_masks(sampler, texts, torch.Generator(device).manual_seed(1), steps=steps, guidance=3.0,
                         grid=grid, size_control="per_tumour")
    _sync(device)
    sec = (time.perf_counter() - t0) / batch
    agree = _same_draws(lambda g: sample_masks(sampler, texts[:2], g, steps=2, guidance=3.0, grid=[32, 32, 16],
                                               bf16=False).argmax(1), sampler, device)
    return {"fp32_rel_max_diff_cpu_vs_gpu": rel, "argmax_count_max_abs_diff": int((counts - want).abs().max()),
            "argmax_count_target": want.tolist(),
            "probs_finite": bool(torch.isfinite(probs).all()), "steps": steps, "batch": batch,
            "sec_per_mask_bf16_cfg": sec, "cpu_generator_label_agreement_cpu_vs_gpu": agree}


def _same_draws(sample_fn, nets, device: torch.device) -> float:
    """A CPU generator driving sampling on `device` (fp32): the fraction of equal outputs (labels) or
    the max |difference| (HU) against the same seed on the CPU; the nets end on `device`."""
    outs = []
    for dev in ("cpu", device):
        for net in nets if isinstance(nets, tuple) else (nets,):
            net.to(dev)
        outs.append(sample_fn(torch.Generator().manual_seed(2)).cpu())
    a, b = outs
    return float((a == b).float().mean()) if not a.is_floating_point() else float((a - b).abs().max())


def stage2(device: torch.device, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    vae_args = yaml.safe_load((ROOT / "stage2_ct/configs/vae/phantom.yaml").read_text())["model"]["init_args"]["vae"]
    vae = SliceAutoencoder(**vae_args).eval()
    ldm_args = yaml.safe_load((ROOT / "stage2_ct/configs/ldm/phantom.yaml").read_text())["model"]["init_args"]
    ldm_args = {k: v for k, v in ldm_args.items() if k not in ("vae_path", "vae_config", "export_path", "decay_steps")}
    module = SliceLDMModule(vae_path=None, vae_config=None, **ldm_args).eval()  # the phantom config's net
    c = module.hparams.latent_channels
    text = module.encode_text(PROMPTS[:2])
    extra = {"prev": torch.randn(2, c, 32, 32), "seg": torch.rand(2, 12, 32, 32),
             "position": torch.rand(2, 1), "level": torch.tensor([100, 100])}

    def fwd(dev, inp):
        module.to(dev)
        return module.denoiser(inp["x"], inp["t"], **{k: inp[k] for k in extra}, **{k: inp[k] for k in text})

    rel = _max_diff(fwd, {"x": torch.randn(2, c, 32, 32), "t": torch.tensor([10, 900]), **extra, **text}, device)
    gen = module.generator(vae).to(device)
    masks = torch.randint(0, 12, (batch, 128, 128, 80), device=device)
    gen.generate(masks[:, :, :, :2], PROMPTS[:batch], torch.Generator(device).manual_seed(0),
                    steps=2, guidance=1.5)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    hu = gen.generate(masks, PROMPTS[:batch], torch.Generator(device).manual_seed(1),
                         steps=steps, guidance=1.5)
    _sync(device)
    sec = (time.perf_counter() - t0) / batch
    small = torch.randint(0, 12, (2, 128, 128, 3))  # on the CPU: the output must come back there
    on_cpu = gen.generate(small[..., :1], PROMPTS[:2], None, steps=1).device.type == "cpu"
    diff = _same_draws(lambda g: gen.generate(small, PROMPTS[:2], g, steps=2, autocast=False), (gen,), device)
    return {"fp32_rel_max_diff_cpu_vs_gpu": rel, "shape_ok": list(hu.shape) == list(masks.shape),
            "output_on_masks_device": on_cpu, "cpu_generator_hu_max_diff_cpu_vs_gpu": diff,
            "hu_finite_in_range": bool(torch.isfinite(hu).all() and hu.min() >= -1000 and hu.max() <= 1000),
            "steps": steps, "batch": batch, "sec_per_volume_bf16_cfg": sec}


def harmonize(device: torch.device) -> dict:
    """Block organs with per-slice level offsets: harmonised on the CPU and on `device` (fp32)."""
    ids = organ_ids(default_labels().num_classes)
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 96, 96, 40, dtype=torch.long)
    labels[:, 10:60, 10:60, 4:36] = ids[0]
    labels[:, 65:85, 20:45, 8:30] = ids[1]
    hu = 50 + 10 * torch.randn(labels.shape, generator=g) + 8 * torch.randn(2, 1, 1, 40, generator=g)
    a = harmonize_levels(hu, labels, ids)
    b = harmonize_levels(hu.to(device), labels.to(device), ids).cpu()
    return {"max_abs_diff_cpu_vs_gpu_hu": float((a - b).abs().max()),
            "moved_rms_hu": float((a - hu).pow(2).mean().sqrt())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/cuda_check.json"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps1", type=int, default=25)
    p.add_argument("--steps2", type=int, default=10)  # the shipped LDM's sample_steps
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(a.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "bf16_autocast": bf16_is_fast(device),
           "harmonize": harmonize(device), "stage1": stage1(device, a.steps1, a.batch),
           "stage2": stage2(device, a.steps2, a.batch)}
    log.info("%s", json.dumps(res, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
