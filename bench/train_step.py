"""Seconds per training step of the stage-2 phantom models on this CPU: the VAE (VAEModule, 16
random 64^2 crops) and the slice LDM (SliceLDMModule, batch 16 of 32 x 32 latents), each in
contiguous (NCHW) and channels-last memory format, fp32 or bf16 autocast.

    .venv/bin/python bench/train_step.py [--latent-channels 12] [--threads 2] [--rounds 3] \
        [--precision fp32 bf16] [--out bench/results/train_step.json]

A step is what the LightningModules do per batch: forward, loss, backward, AdamW step (the
LDM's EMA update and data loading are left out). The two memory formats of a model run
interleaved for `--rounds` rounds, so load from other jobs hits both alike; a time is the median of
the per-round medians (`--steps` timed steps after 3 warm-up steps per round). Synthetic inputs of
the phantom shapes; the model weights are the configs' initialisations.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.vae.autoencoder import kl_divergence  # noqa: E402
from stage2_ct.ldm_module import SliceLDMModule  # noqa: E402
from stage2_ct.vae_module import VAEModule  # noqa: E402

log = logging.getLogger("train_step")
TEXTS = ["liver: fatty. phase: portal venous. tumor: none.",
         "liver: normal. phase: non contrast. spleen: enlarged."]


def _init_args(kind: str) -> dict:
    cfg = yaml.safe_load((ROOT / "stage2_ct" / "configs" / kind / "phantom.yaml").read_text())
    drop = ("vae_path", "vae_config", "decay_steps", "export_path")
    return {k: v for k, v in cfg["model"]["init_args"].items() if k not in drop}


def vae_step(latent_channels: int, channels_last: bool) -> Callable[[], None]:
    args = _init_args("vae")
    module = VAEModule(**{**args, "vae": {**args["vae"], "latent_channels": latent_channels}},
                       channels_last=channels_last)
    module.on_fit_start()
    opt = torch.optim.AdamW(module.vae.parameters(), lr=1e-4)
    batch = {"image": torch.rand(16, 1, 64, 64) * 2 - 1}

    def step() -> None:
        x = module._image(batch)
        x_rec, mu, logvar = module.vae(x)
        kl = kl_divergence(mu.float(), logvar.float())
        loss = module.reconstruction_loss(x_rec, x) + module.hparams.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def ldm_step(latent_channels: int, channels_last: bool) -> Callable[[], None]:
    module = SliceLDMModule(**{**_init_args("ldm"), "latent_channels": latent_channels},
                            channels_last=channels_last)
    module.on_fit_start()
    module.train()
    opt = module.configure_optimizers()["optimizer"]
    c = latent_channels
    batch = {"latent": torch.randn(16, c, 32, 32), "prev": torch.randn(16, c, 32, 32),
             "labels": torch.randint(0, module.hparams.num_classes, (16, 128, 128)),
             "position": torch.rand(16, 1), "text": TEXTS * 8}

    def step() -> None:
        loss = module.diffusion_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def time_steps(step: Callable[[], None], steps: int, bf16: bool) -> float:
    """Median seconds of `steps` steps after 3 untimed ones."""
    times = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(3 + steps):
            t = time.perf_counter()
            step()
            if i >= 3:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent-channels", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_step.json")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    rows = []
    for model, build in (("vae", vae_step), ("ldm", ldm_step)):
        for precision in a.precision:
            torch.manual_seed(0)
            steps = {cl: build(a.latent_channels, cl) for cl in (False, True)}
            per_round: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(a.rounds):
                for cl, step in steps.items():
                    per_round[cl].append(time_steps(step, a.steps, precision == "bf16"))
            nchw, cl = (statistics.median(per_round[k]) for k in (False, True))
            rows.append({"model": model, "precision": precision, "s_per_step_nchw": round(nchw, 4),
                         "s_per_step_channels_last": round(cl, 4), "speedup": round(nchw / cl, 3),
                         "rounds": per_round})
            log.info("%s %s: NCHW %.3f s, channels-last %.3f s per step (%.2fx)", model, precision, nchw, cl,
                     nchw / cl)
    out = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": platform.processor(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": a.threads,
           "torch": torch.__version__, "latent_channels": a.latent_channels, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print("| model | precision | NCHW s / step | channels-last s / step | speed-up |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['s_per_step_nchw']:.3f} | "
              f"{r['s_per_step_channels_last']:.3f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
