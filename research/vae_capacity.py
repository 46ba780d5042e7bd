"""VAE capacity sweep: RMSE (body / soft tissue, HU) after N steps for several SliceAutoencoder
variants, trained with the phantom recipe of `stage2_ct.vae_module.VAEModule` (same loss, AdamW,
warm-up + cosine, grad clip 1, batch 16 random 64^2 crops of phantom slices).

It answers "which architecture reaches the floor within the CPU budget": run it on a GPU for the
RMSE-vs-steps curves (all variants side by side, one process each), and with `--time-only` on the
CPU for seconds per step; steps affordable in the budget = budget / (s / step).

    python research/vae_capacity.py --device cuda --out runs/vae_capacity          # GPU: curves
    python research/vae_capacity.py --device cpu --time-only --threads 1           # CPU: s / step
    python research/vae_capacity.py --sweep recipe --steps 8000 --out runs/vae_recipe  # GPU: recipes
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.data.phantom import generate_case  # noqa: E402
from shared.data.transforms import hu_to_model  # noqa: E402
from shared.vae.autoencoder import SliceAutoencoder, kl_divergence  # noqa: E402
from stage2_ct.common import hu_errors, warmup_cosine  # noqa: E402
from stage2_ct.vae_module import VAEModule  # noqa: E402

log = logging.getLogger("vae_capacity")

BASE = {"latent_channels": 4, "channels": [32, 48, 96], "num_res_blocks": [0, 1, 1]}
VARIANTS: dict[str, dict] = {
    "base_bf16": {"vae": BASE, "bf16": True},
    "base_fp32": {"vae": BASE, "bf16": False},
    "base_lr2e-3": {"vae": BASE, "bf16": True, "lr": 2e-3},
    "wide_64_96_128": {"vae": {**BASE, "channels": [64, 96, 128], "num_res_blocks": [0, 1, 2]}, "bf16": True},
    "fullres_rb": {"vae": {**BASE, "channels": [32, 64, 128], "num_res_blocks": [1, 1, 2]}, "bf16": True},
    "lat8": {"vae": {**BASE, "latent_channels": 8}, "bf16": True},
    "lat8_wide": {"vae": {**BASE, "latent_channels": 8, "channels": [48, 96, 128],
                          "num_res_blocks": [0, 2, 2]}, "bf16": True},
    "base_x3": {"vae": BASE, "bf16": True, "steps_mult": 3},
}
# Recipe sweep for the 8,000-step CPU budget of lat8_wide (`--sweep recipe --steps 8000`): learning
# rate, soft-tissue weight, squared-error weight and latent channels around the shipped recipe.
WIDE = VARIANTS["lat8_wide"]["vae"]
RECIPES: dict[str, dict] = {
    "lat8_wide": VARIANTS["lat8_wide"],
    "lat8_wide_lr2e-3": {"vae": WIDE, "bf16": True, "lr": 2e-3},
    "lat8_wide_soft8": {"vae": WIDE, "bf16": True, "loss": {"soft_weight": 8.0}},
    "lat8_wide_soft8_lr2e-3": {"vae": WIDE, "bf16": True, "lr": 2e-3, "loss": {"soft_weight": 8.0}},
    "lat8_wide_soft8_mse5": {"vae": WIDE, "bf16": True, "loss": {"soft_weight": 8.0, "mse_weight": 5.0}},
    "lat12_wide": {"vae": {**WIDE, "latent_channels": 12}, "bf16": True},
    "lat16_wide": {"vae": {**WIDE, "latent_channels": 16}, "bf16": True},
    "lat12_wide_soft8_lr2e-3": {"vae": {**WIDE, "latent_channels": 12}, "bf16": True, "lr": 2e-3,
                                "loss": {"soft_weight": 8.0}},
}
SWEEPS = {"capacity": VARIANTS, "recipe": RECIPES}
# Named with --variants only (CPU timings: bf16 vs fp32 on CPUs without native bf16).
EXTRA = {"lat8_wide_fp32": {"vae": WIDE, "bf16": False}}
LOSS = {"soft_weight": 4.0, "mse_weight": 20.0, "kl_weight": 1e-6}  # the phantom recipe


def _case_slices(seed: int) -> np.ndarray:
    ct = generate_case(seed).ct  # (X, Y, Z) int16 HU
    return np.ascontiguousarray(np.moveaxis(hu_to_model(ct.astype(np.float32)), -1, 0))  # (Z, X, Y)


def make_data(n_train: int, n_val: int, path: Path, procs: int) -> None:
    with Pool(procs) as pool:
        train = pool.map(_case_slices, range(10_000, 10_000 + n_train))
        val = pool.map(_case_slices, range(20_000, 20_000 + n_val))
    np.savez(path, train=np.concatenate(train), val=np.concatenate([v[::4] for v in val]))


def run_variant(name: str, data: Path, steps: int, device: str, eval_every: int, time_only: bool,
                timed: int = 20, warmup: int = 5) -> dict:
    spec = {**VARIANTS, **RECIPES, **EXTRA}[name]
    torch.manual_seed(0)
    steps = steps * spec.get("steps_mult", 1)
    module = VAEModule(vae=spec["vae"], **{**LOSS, **spec.get("loss", {})})
    vae: SliceAutoencoder = module.vae.to(device)
    lr = spec.get("lr", 1e-3)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    arrays = np.load(data)
    train = torch.from_numpy(arrays["train"]).to(device)  # (N, 128, 128)
    val = torch.from_numpy(arrays["val"]).to(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    n_params = sum(p.numel() for p in vae.parameters())
    curve, t0 = [], time.perf_counter()
    dtype = torch.bfloat16 if spec["bf16"] else torch.float32
    for step in range(steps):
        idx = torch.randint(len(train), (16,), generator=gen)
        ox, oy = torch.randint(0, 128 - 64 + 1, (2,), generator=gen).tolist()
        x = train[idx.to(device), None, ox : ox + 64, oy : oy + 64]  # (16, 1, 64, 64)
        for g in opt.param_groups:
            g["lr"] = lr * warmup_cosine(step, 100, steps)
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=spec["bf16"]):
            x_rec, mu, logvar = vae(x)
        loss = module.reconstruction_loss(x_rec, x) + module.hparams.kl_weight * kl_divergence(mu.float(), logvar.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if time_only and step == warmup - 1:
            t0 = time.perf_counter()
        if time_only and step == warmup + timed - 1:
            return {"variant": name, "params": n_params, "s_per_step": (time.perf_counter() - t0) / timed,
                    "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append({"step": step + 1, **evaluate(vae, val), "wall_s": round(time.perf_counter() - t0, 1)})
            log.info("%s %s", name, curve[-1])
    return {"variant": name, "params": n_params, "spec": spec, "curve": curve}


@torch.no_grad()
def evaluate(vae: SliceAutoencoder, val: torch.Tensor) -> dict[str, float]:
    sums: dict[str, float] = {}
    for s in range(0, len(val), 64):
        x = val[s : s + 64, None]
        x_rec = vae.decode(vae.encode(x)[0]).clamp(-1, 1)
        for k, v in hu_errors(x_rec, x).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {f"rmse_{n}": round((sums[f"{n}_se"] / max(sums[f"{n}_n"], 1)) ** 0.5, 2) for n in ("body", "soft")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path("runs/vae_capacity"))
    p.add_argument("--sweep", choices=list(SWEEPS), default="capacity")
    p.add_argument("--variants", nargs="*", default=None, help="default: every variant of --sweep")
    p.add_argument("--variant", help="(internal) run one variant in this process")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--cases", type=int, default=200)
    p.add_argument("--val-cases", type=int, default=8)
    p.add_argument("--procs", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--time-only", action="store_true", help="seconds per step only")
    p.add_argument("--timed-steps", type=int, default=20, help="--time-only: steps timed after the warm-up")
    p.add_argument("--warmup", type=int, default=5, help="--time-only: untimed steps first")
    a = p.parse_args()
    a.variants = a.variants or list(SWEEPS[a.sweep])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    data = a.out / "slices.npz"
    if a.variant:
        res = run_variant(a.variant, data, a.steps, a.device, a.eval_every, a.time_only)
        (a.out / f"{a.variant}.json").write_text(json.dumps(res, indent=1))
        return
    if not data.exists():
        t = time.perf_counter()
        make_data(2 if a.time_only else a.cases, 1 if a.time_only else a.val_cases, data, a.procs)
        log.info("data in %.0f s", time.perf_counter() - t)
    if a.time_only:  # sequential: timings must not share the cores
        for name in a.variants:
            res = run_variant(name, data, a.steps, a.device, a.eval_every, True, a.timed_steps, a.warmup)
            log.info("%s", res)
            (a.out / f"time_{name}.json").write_text(json.dumps(res))
        return
    procs = [subprocess.Popen([sys.executable, __file__, "--variant", n, "--device", a.device, "--out",
                               str(a.out), "--steps", str(a.steps), "--eval-every", str(a.eval_every)])
             for n in a.variants]
    for proc in procs:
        proc.wait()


if __name__ == "__main__":
    main()
