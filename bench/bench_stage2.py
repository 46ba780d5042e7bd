"""Benchmark stage-2 sampling (CPU): seconds per slice and per 80-slice volume.

    .venv/bin/python bench/bench_stage2.py [--ldm weights/stage2_ldm_phantom] [--threads 2]
        [--slices 8] [--repeats 3] [--floor-only --out bench/results/stage2_floor_<net>.json]  # fp32 and bf16
        [--fp32-only --out bench/results/stage2_fp32_<cpu>.json]   # CPUs without native bf16

Configurations: 1000-step DDPM (the naive baseline: fp32, batch 1, CFG as two passes) and
50 / 20 / 10-step DDIM; fp32 vs bf16 autocast; 1 vs 8 volumes per batch; with and without
classifier-free guidance (CFG pair batched in one forward). A DDPM step costs exactly one network
evaluation like a DDIM step, so the 1000-step rows are timed on `--ddpm-timed-steps` steps and
extrapolated linearly (stated in the table). Each configuration generates `--slices` slices of
128 x 128 (plus their VAE decode) after a warm-up; s/volume = s/slice x 80. Uses the trained
phantom artifacts when present (timings do not depend on the weights), else random weights of
the same phantom configuration. Prints a markdown table; writes bench/results/stage2.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.runtime import bf16_is_fast, onednn_bf16  # noqa: E402

N_SLICES_VOLUME = 80


def build_module(ldm: str | None, vae: str | None):
    import yaml

    from shared.vae.autoencoder import SliceAutoencoder
    from stage2_ct.generator import load_slice_ldm
    from stage2_ct.ldm_module import SliceLDMModule

    if ldm and Path(ldm).with_suffix(".safetensors").is_file():
        return load_slice_ldm(ldm, vae_path=vae), "trained artifacts"
    cfg = yaml.safe_load((ROOT / "stage2_ct/configs/ldm/phantom.yaml").read_text())["model"]["init_args"]
    vcfg = yaml.safe_load((ROOT / "stage2_ct/configs/vae/phantom.yaml").read_text())["model"]["init_args"]
    keep = ("latent_channels", "unet_overrides", "text_encoder", "scheduler", "pooled_text", "class_embed_dim")
    module = SliceLDMModule(vae_path=None, vae_config=None, **{k: cfg[k] for k in keep}).eval()
    return module.generator(SliceAutoencoder(**vcfg["vae"]).eval()), "random weights, phantom config"


def time_config(module, steps: int, batch: int, cfg: bool, bf16: bool, batch_cfg: bool,
                n_slices: int, repeats: int = 1) -> float:
    """Seconds per slice of one volume (wall time / (n_slices), batch volumes at once / batch);
    the median over `repeats` timed runs (this VM's timings wander by ~10 % between runs)."""
    masks = torch.zeros(batch, 128, 128, n_slices, dtype=torch.long)
    masks[:, 30:90, 30:90] = 4
    texts = ["tumor: none. spleen: normal. liver: normal. kidneys: both present. bladder: normal. "
             "phase: portal venous."] * batch
    g = torch.Generator().manual_seed(0)
    kw = dict(steps=steps, guidance=1.5 if cfg else 1.0, autocast=bf16, batch_cfg=batch_cfg)
    module.generate(masks[..., :1], texts, g, **{**kw, "steps": 1})  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        module.generate(masks, texts, g, **kw)
        times.append((time.perf_counter() - t0) / n_slices / batch)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ldm", default=str(ROOT / "weights/stage2_ldm_phantom"))
    p.add_argument("--vae", default=str(ROOT / "weights/stage2_vae_phantom"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slices", type=int, default=2)
    p.add_argument("--ddpm-timed-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (median)")
    p.add_argument("--floor-only", action="store_true",
                   help="only the issue's floor row (20-step DDIM, batch 8, CFG, bf16), e.g. to compare nets")
    p.add_argument("--fp32-only", action="store_true",
                   help="every row in fp32 (CPUs without native bf16: bf16 rows would take hours)")
    p.add_argument("--out", default=str(ROOT / "bench/results/stage2.json"))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module, weights = build_module(args.ldm, args.vae)
    with torch.no_grad():
        n_params = sum(x.numel() for x in module.denoiser.parameters())
    rows = []
    # (label, steps, timed steps, batch, cfg, bf16, batch_cfg)
    configs = [("DDPM 1000 (naive: fp32, batch 1, CFG 2 passes)", 1000, args.ddpm_timed_steps, 1, True, False, False)]
    for steps in (50, 20, 10):
        configs.append((f"DDIM {steps}", steps, steps, 8, True, True, True))
    for bf16 in (False, True):
        for batch in (1, 8):
            for cfg in (False, True):
                configs.append(("DDIM 20", 20, 20, batch, cfg, bf16, True))
    configs.append(("DDPM 1000", 1000, args.ddpm_timed_steps, 8, True, True, True))
    if args.floor_only:  # fp32, and bf16 where oneDNN has a bf16 path (faster or not: both are timed)
        configs = [("DDIM 20", 20, 20, 8, True, bf16, True) for bf16 in ([False, True] if onednn_bf16() else [False])]
    if args.fp32_only:
        configs = [(label, s, t, b, c, False, bc) for label, s, t, b, c, _, bc in configs]
    seen = set()
    for label, steps, timed, batch, cfg, bf16, bcfg in configs:
        key = (steps, batch, cfg, bf16, bcfg)
        if key in seen:
            continue
        seen.add(key)
        s_slice = time_config(module, timed, batch, cfg, bf16, bcfg, args.slices, args.repeats) * steps / timed
        row = {"sampler": label, "steps": steps, "timed_steps": timed, "batch": batch, "cfg": cfg,
               "precision": "bf16" if bf16 else "fp32", "s_per_slice": s_slice,
               "s_per_volume": s_slice * N_SLICES_VOLUME, "extrapolated": timed != steps}
        rows.append(row)
        print(f"{label:48s} batch {batch} cfg {cfg!s:5} {row['precision']}: {s_slice:.3f} s/slice "
              f"{row['s_per_volume']:.1f} s/volume", flush=True)
    base = rows[0]["s_per_volume"]
    lines = ["| sampler | steps | volumes/batch | CFG | precision | s/slice | s/volume (80 slices) | speed-up vs naive |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = f"{r['steps']} (timed {r['timed_steps']}, extrapolated)" if r["extrapolated"] else str(r["steps"])
        lines.append(f"| {r['sampler']} | {steps} | {r['batch']} | {'yes' if r['cfg'] else 'no'} | "
                     f"{r['precision']} | {r['s_per_slice']:.3f} | {r['s_per_volume']:.1f} | "
                     + ("- |" if args.floor_only else f"{base / r['s_per_volume']:.0f}x |"))
    table = "\n".join(lines)
    print(f"\nstage-2 sampling, {args.threads} threads, UNet {n_params / 1e6:.2f}M params ({weights})\n")
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(), "machine": platform.processor()
                               or platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                               "onednn_bf16": onednn_bf16(),
                               "bf16_fast": bf16_is_fast("cpu"), "threads": args.threads, "repeats": args.repeats,
                               "slices": args.slices, "unet_params": n_params, "weights": weights,
                               "rows": rows, "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
