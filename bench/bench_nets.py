"""Benchmark the default UNets against MONAI's DiffusionModelUNet of the same widths (CPU).

    .venv/bin/python bench/bench_nets.py [--iters 3] [--monai-iters 1] [--rounds 3] [--threads 2]

Per config (net x 2D/3D x fp32/bf16 autocast) a fresh subprocess measures: forward time and
train-step time (forward + backward + AdamW step), median over timed iterations after one
warm-up train step. The two nets of a config run interleaved (ours, MONAI, ours, MONAI, ... for `--rounds`
rounds) so that load from other jobs hits both alike; a time is the median of the per-round
medians. FLOPs (first round only) of one forward and one forward+backward (torch.utils.flop_counter.FlopCounterMode);
peak memory as the increase of the process's peak RSS (resource.getrusage ru_maxrss) from
after model/optimizer/input construction to the end of the runs. The machine's matmul peak is a
2048^2 matmul in fp32 and bf16 in the same run. Prints a markdown table; writes
bench/results/nets.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {  # preset, input shape, context tokens
    "3d": ("stage1_phantom", (2, 12, 64, 64, 40)),
    "2d": ("stage2_phantom", (16, 12, 32, 32)),
}
CONTEXT_LEN = 77


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(net_kind: str, dims: str, precision: str, iters: int, threads: int, flops: bool) -> dict:
    """Runs inside the subprocess."""
    from torch.utils.flop_counter import FlopCounterMode

    from shared.nets import build_monai_unet, build_unet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    preset, shape = CONFIGS[dims]
    net, args = build_unet(preset, in_channels=shape[1], out_channels=shape[1], extra_embed_dim=0)
    if net_kind == "monai":
        net = build_monai_unet(**args)
    fmt = torch.channels_last_3d if dims == "3d" else torch.channels_last
    net = net.to(memory_format=fmt)
    x = torch.randn(shape).contiguous(memory_format=fmt)
    t = torch.randint(0, 1000, (shape[0],))
    ctx = torch.randn(shape[0], CONTEXT_LEN, args["context_dim"])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    ac = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def forward():
        with ac:
            return net(x, t, context=ctx)

    def train_step():
        loss = forward().float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rss0 = _rss_mib()
    train_step()  # warm-up (also warms the forward kernels)
    with torch.no_grad():
        fwd = []
        for _ in range(iters):
            t0 = time.perf_counter()
            forward()
            fwd.append(time.perf_counter() - t0)
    trn = []
    for _ in range(iters):
        t0 = time.perf_counter()
        train_step()
        trn.append(time.perf_counter() - t0)
    peak = _rss_mib() - rss0
    row = {
        "net": net_kind, "dims": dims, "precision": precision, "shape": list(shape),
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6, "iters": iters,
        "forward_s": statistics.median(fwd), "train_step_s": statistics.median(trn),
        "peak_rss_delta_MiB": peak,
    }
    if not flops:
        return row
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            forward()
    fwd_flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        forward().float().square().mean().backward()
    train_flops = fc.get_total_flops()
    return {**row, "forward_GFLOP": fwd_flops / 1e9, "train_GFLOP": train_flops / 1e9}


def matmul_peak(threads: int) -> dict:
    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        a @ b
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        out[name] = 2 * 2048**3 / min(times) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--monai-iters", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench/results/nets.json"))
    a = ap.parse_args()
    if a.one:
        net_kind, dims, precision, iters, flops = a.one.split(",")
        print(json.dumps(run_one(net_kind, dims, precision, int(iters), a.threads, flops == "1")))
        return
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    peak = matmul_peak(a.threads)
    rows, ratios = [], {}
    for dims in ("3d", "2d"):
        for precision in ("fp32", "bf16"):
            runs: dict[str, list[dict]] = {"guidegen": [], "monai": []}
            for rnd in range(a.rounds):
                for net_kind in ("guidegen", "monai"):
                    iters = a.iters if net_kind == "guidegen" else a.monai_iters
                    spec = f"{net_kind},{dims},{precision},{iters},{int(rnd == 0)}"
                    res = subprocess.run(
                        [sys.executable, __file__, "--one", spec, "--threads", str(a.threads)],
                        capture_output=True, text=True, check=True, cwd=ROOT,
                    )
                    runs[net_kind].append(json.loads(res.stdout.strip().splitlines()[-1]))
                    print(f"done {spec}: train {runs[net_kind][-1]['train_step_s']:.2f} s",
                          file=sys.stderr, flush=True)
            for rs in runs.values():
                row = {**rs[0], "rounds": len(rs),
                       "forward_s": statistics.median(r["forward_s"] for r in rs),
                       "train_step_s": statistics.median(r["train_step_s"] for r in rs),
                       "train_step_s_per_round": [r["train_step_s"] for r in rs],
                       "peak_rss_delta_MiB": max(r["peak_rss_delta_MiB"] for r in rs)}
                row["forward_GFLOPs"] = row["forward_GFLOP"] / row["forward_s"]
                row["train_GFLOPs"] = row["train_GFLOP"] / row["train_step_s"]
                row["train_pct_peak"] = 100 * row["train_GFLOPs"] / peak[precision]
                rows.append(row)
            g, m = rows[-2], rows[-1]
            ratios[f"{dims}_{precision}"] = {
                "train": m["train_step_s"] / g["train_step_s"], "forward": m["forward_s"] / g["forward_s"],
                "train_per_round": [mr["train_step_s"] / gr["train_step_s"]
                                    for gr, mr in zip(runs["guidegen"], runs["monai"], strict=True)],
                "train_GFLOP": m["train_GFLOP"] / g["train_GFLOP"],
            }
    hdr = ("| net | dims | prec | params (M) | fwd (s) | train step (s) | peak RSS delta (MiB) "
           "| train GFLOP | train GFLOP/s | % of matmul peak |")
    print(f"matmul peak 2048^2: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s, "
          f"{a.threads} threads\n")
    print(hdr)
    print("|---" * (hdr.count("|") - 1) + "|")
    for r in rows:
        print(f"| {r['net']} | {r['dims']} | {r['precision']} | {r['params_M']:.2f} | {r['forward_s']:.3f} "
              f"| {r['train_step_s']:.3f} | {r['peak_rss_delta_MiB']:.0f} | {r['train_GFLOP']:.1f} "
              f"| {r['train_GFLOPs']:.1f} | {r['train_pct_peak']:.0f} |")
    print("\nMONAI / GuideGen ratio (time: median over rounds; per round in brackets):")
    for k, v in ratios.items():
        per = ", ".join(f"{r:.2f}" for r in v["train_per_round"])
        print(f"- {k}: train step {v['train']:.2f}x [{per}], forward {v['forward']:.2f}x, "
              f"train GFLOP {v['train_GFLOP']:.2f}x")
    wall, load_end = time.perf_counter() - t_start, os.getloadavg()[0]
    print(f"\nwhole run: {wall / 60:.1f} min; 1-min load average {load_start:.1f} at start, "
          f"{load_end:.1f} at end ({os.cpu_count()} CPUs)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads,
                    "torch": torch.__version__},
        "rounds": a.rounds, "wall_s": wall, "load_avg_1min": [load_start, load_end],
        "matmul_peak_GFLOPs": peak, "rows": rows, "monai_over_guidegen": ratios,
    }, indent=2))


if __name__ == "__main__":
    main()
