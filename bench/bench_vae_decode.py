"""VAE decode, fp32 vs bf16 body (`SliceAutoencoder.decode(z, bf16=True)`): seconds per 80-slice
volume and the HU the bf16 body changes, on real test volumes of the phantom.

    .venv/bin/python bench/bench_vae_decode.py [--vae weights/stage2_vae_phantom] [--cases 3] [--threads 2]

Per case: encode every axial slice (posterior mean), decode in fp32 and with the bf16 body; report
decode seconds (median of `--repeats`), RMS of bf16 - fp32 inside the body (> -500 HU) and on soft
tissue (-150..250 HU), and the soft-tissue RMSE of each decode against the real slices.
Writes bench/results/vae_decode.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def timed(fn, repeats: int) -> tuple[torch.Tensor, float]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    from shared.labels import default_labels
    from stage2_ct.data import load_cases
    from stage2_ct.vae_module import load_vae

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae", default=str(ROOT / "weights/stage2_vae_phantom"))
    p.add_argument("--manifest", default=str(ROOT / "data/phantom/manifest.jsonl"))
    p.add_argument("--cases", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench/results/vae_decode.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    vae = load_vae(args.vae)
    store = load_cases(Path(args.manifest), "test", args.cases, default_labels(), None)
    rows = []
    for i, case in enumerate(store.case_ids):
        hu = store.hu[i].permute(2, 0, 1)[:, None].float().clamp(-1000, 1000)  # (Z, 1, X, Y)
        with torch.no_grad():
            z = vae.encode_hu(hu)
            full, t32 = timed(lambda z=z: vae.decode_hu(z), args.repeats)
            fast, t16 = timed(lambda z=z: vae.decode_hu(z, bf16=True), args.repeats)
        body, soft = hu > -500, (hu > -150) & (hu < 250)
        row = {"case": case, "slices": int(hu.shape[0]), "s_fp32": t32, "s_bf16_body": t16,
               "rms_bf16_vs_fp32_body_hu": rms((fast - full)[body]),
               "rms_bf16_vs_fp32_soft_hu": rms((fast - full)[soft]),
               "soft_rmse_vs_real_fp32_hu": rms((full - hu)[soft]),
               "soft_rmse_vs_real_bf16_hu": rms((fast - hu)[soft])}
        rows.append(row)
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(), "threads": args.threads,
                               "repeats": args.repeats, "vae": args.vae, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
