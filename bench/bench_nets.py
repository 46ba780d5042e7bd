"""Benchmark the default UNets against MONAI's DiffusionModelUNet of the same widths (CPU).

    .venv/bin/python bench/bench_nets.py [--iters 3] [--monai-iters 2] [--threads 2]

Per config (net x 2D/3D x fp32/bf16 autocast) a fresh subprocess measures: forward time and
train-step time (forward + backward + AdamW step), median over timed iterations after one
warm-up; FLOPs of one forward and one forward+backward (torch.utils.flop_counter.FlopCounterMode);
peak memory as the increase of the process's peak RSS (resource.getrusage ru_maxrss) from
after model/optimizer/input construction to the end of the runs. The machine's matmul peak is a
2048^2 matmul in fp32 and bf16 in the same run. Prints a markdown table; writes
bench/results/nets.json.
"""

from __future__ import annotations

import argparse
import json
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


def run_one(net_kind: str, dims: str, precision: str, iters: int, threads: int) -> dict:
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
    with torch.no_grad():
        forward()  # warm-up
        fwd = []
        for _ in range(iters):
            t0 = time.perf_counter()
            forward()
            fwd.append(time.perf_counter() - t0)
    train_step()  # warm-up
    trn = []
    for _ in range(iters):
        t0 = time.perf_counter()
        train_step()
        trn.append(time.perf_counter() - t0)
    peak = _rss_mib() - rss0
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            forward()
    fwd_flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        forward().float().square().mean().backward()
    train_flops = fc.get_total_flops()
    f, tr = statistics.median(fwd), statistics.median(trn)
    return {
        "net": net_kind, "dims": dims, "precision": precision, "shape": list(shape),
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6, "iters": iters,
        "forward_s": f, "train_step_s": tr, "peak_rss_delta_MiB": peak,
        "forward_GFLOP": fwd_flops / 1e9, "train_GFLOP": train_flops / 1e9,
        "forward_GFLOPs": fwd_flops / f / 1e9, "train_GFLOPs": train_flops / tr / 1e9,
    }


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
    ap.add_argument("--monai-iters", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench/results/nets.json"))
    a = ap.parse_args()
    if a.one:
        net_kind, dims, precision, iters = a.one.split(",")
        print(json.dumps(run_one(net_kind, dims, precision, int(iters), a.threads)))
        return
    peak = matmul_peak(a.threads)
    rows = []
    for dims in ("3d", "2d"):
        for precision in ("fp32", "bf16"):
            for net_kind in ("guidegen", "monai"):
                iters = a.iters if net_kind == "guidegen" else a.monai_iters
                spec = f"{net_kind},{dims},{precision},{iters}"
                res = subprocess.run(
                    [sys.executable, __file__, "--one", spec, "--threads", str(a.threads)],
                    capture_output=True, text=True, check=True, cwd=ROOT,
                )
                row = json.loads(res.stdout.strip().splitlines()[-1])
                row["train_pct_peak"] = 100 * row["train_GFLOPs"] / peak[precision]
                rows.append(row)
                print(f"done {spec}: train {row['train_step_s']:.2f} s", file=sys.stderr, flush=True)
    ratios = {}
    for dims in ("3d", "2d"):
        for precision in ("fp32", "bf16"):
            g, m = (next(r for r in rows if (r["net"], r["dims"], r["precision"]) == (k, dims, precision))
                    for k in ("guidegen", "monai"))
            ratios[f"{dims}_{precision}"] = {
                "train": m["train_step_s"] / g["train_step_s"], "forward": m["forward_s"] / g["forward_s"],
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
    print("\nMONAI / GuideGen time ratio:")
    for k, v in ratios.items():
        print(f"- {k}: train step {v['train']:.2f}x, forward {v['forward']:.2f}x")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads,
                    "torch": torch.__version__},
        "matmul_peak_GFLOPs": peak, "rows": rows, "monai_over_guidegen": ratios,
    }, indent=2))


if __name__ == "__main__":
    main()
