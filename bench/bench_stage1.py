"""Stage-1 sampling speed: seconds per sampled mask at the phantom grid (64 x 64 x 40) with CFG.

    python bench/bench_stage1.py [--artifact weights/stage1_phantom] [--threads 2] [--timed-steps 3]
        [--out runs/stage1/bench.json]

Configurations: steps 1000 / 100 / 25 x fp32 / bf16 autocast x batch 1 / 8, CFG either as ONE
batched forward (2B) per step (ours) or as two passes (the naive baseline). Every sampler step
costs one identical network call, so per-step time is measured on `--timed-steps` steps (after
one warm-up step) and multiplied by the step count: the 1000- and 100-step rows are
EXTRAPOLATED (stated in the table); the 25-step bf16 batch-8 row is also timed end to end as a
check. Also reports FLOPs per step (torch's FlopCounterMode), achieved FLOP/s vs the measured
fp32 / bf16 matmul peak, and peak RSS. Untrained weights unless --artifact is given (speed does
not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from shared.diffusion import guided_output
from shared.text.encoder import trim_context
from stage1_mask.sampler import MaskSampler, load_stage1, sample_masks

log = logging.getLogger("bench_stage1")

PHANTOM_SAMPLER = dict(
    unet_preset="stage1_phantom",
    text_encoder=dict(text_cfg=dict(width=128, heads=4, layers=2), embed_dim=128),
)
TEXT = "tumor: sigmoid colon 40 mm. spleen: normal. liver: normal. kidneys: both present. " \
       "bladder: normal. phase: portal venous."


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def step_inputs(sampler: MaskSampler, batch: int, grid: list[int]):
    cond, null = trim_context(sampler.encode([TEXT] * batch), sampler.null_context(batch))
    keys = ("context", "context_mask", "cond_vector")
    cond, null = [tuple(c.detach() for c in ctx) for ctx in (cond, null)]
    x = sampler.scheduler.init_noise((batch, sampler.num_classes, *grid), torch.Generator().manual_seed(0))
    return x, dict(zip(keys, cond, strict=True)), dict(zip(keys, null, strict=True))


@torch.no_grad()
def time_step(sampler: MaskSampler, batch: int, grid: list[int], bf16: bool, batch_cfg: bool,
              timed: int, guidance: float = 2.0) -> tuple[float, float]:
    """Seconds per sampler step (network call(s) + scheduler step) and FLOPs per step."""
    x, cond, uncond = step_inputs(sampler, batch, grid)
    sampler.scheduler.set_timesteps(1000)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    t = torch.full((batch,), 500, dtype=torch.long)

    def one() -> None:
        out = guided_output(sampler, x, t, guidance, cond, uncond, batch_cfg)
        sampler.scheduler.step(out, 500, x, torch.Generator().manual_seed(0))

    with ctx:
        one()  # warm-up
        with FlopCounterMode(display=False) as fc:
            one()
        t0 = time.perf_counter()
        for _ in range(timed):
            one()
    return (time.perf_counter() - t0) / timed, float(fc.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timed-steps", type=int, default=3)
    parser.add_argument("--grid", type=int, nargs=3, default=[64, 64, 40])
    parser.add_argument("--out", default="runs/stage1/bench.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sampler = load_stage1(args.artifact) if args.artifact else MaskSampler(12, **PHANTOM_SAMPLER).eval()
    sampler.text_encoder.set_frozen(True)
    sampler.requires_grad_(False)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows = []
    for bf16 in (False, True):
        for batch in (1, 8):
            for batch_cfg in (False, True):
                sec, flops = time_step(sampler, batch, args.grid, bf16, batch_cfg, args.timed_steps)
                prec = "bf16" if bf16 else "fp32"
                for steps in (1000, 100, 25):
                    rows.append({"steps": steps, "precision": prec, "batch": batch,
                                 "cfg": "one batched forward" if batch_cfg else "two passes",
                                 "sec_per_mask": sec * steps / batch, "sec_per_step": sec,
                                 "gflop_per_step": flops / 1e9,
                                 "achieved_vs_peak": flops / sec / peaks[prec],
                                 "extrapolated_from_steps": args.timed_steps})
                log.info("%s batch %d %s: %.3f s/step", prec, batch,
                         "batched CFG" if batch_cfg else "two-pass CFG", sec)
    # end-to-end check of the extrapolation: 25 steps, bf16, batch 8, batched CFG
    t0 = time.perf_counter()
    sample_masks(sampler, [TEXT] * 8, torch.Generator().manual_seed(0), 25, 2.0, grid=args.grid)
    e2e = (time.perf_counter() - t0) / 8
    result = {"threads": args.threads, "grid": args.grid, "matmul_peak_flops": peaks,
              "rows": rows, "timed_25_steps_bf16_b8_sec_per_mask": e2e,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    naive = next(r for r in rows if r["steps"] == 1000 and r["precision"] == "fp32" and r["batch"] == 1
                 and r["cfg"] == "two passes")
    print(f"stage-1 sampling, grid {args.grid}, {args.threads} threads; per-step times from "
          f"{args.timed_steps} timed steps, multiplied by the step count (1000/100 extrapolated)")
    print("| steps | precision | batch | CFG | s / mask | speed-up vs naive | GFLOP/step | % of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['steps']} | {r['precision']} | {r['batch']} | {r['cfg']} | {r['sec_per_mask']:.2f} | "
              f"{naive['sec_per_mask'] / r['sec_per_mask']:.0f}x | {r['gflop_per_step']:.1f} | "
              f"{100 * r['achieved_vs_peak']:.0f}% |")
    print(f"25 steps bf16 batch 8 timed end to end: {e2e:.2f} s/mask; peak RSS "
          f"{result['peak_rss_mb']:.0f} MB; matmul peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
