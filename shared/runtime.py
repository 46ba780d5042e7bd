"""Runtime settings shared by the CLIs and the samplers: threads, and where bf16 pays off (one
decision for autocast at sampling time and for Lightning's precision).

bf16 autocast is fast on CUDA GPUs with bf16. On a CPU it depends on more than the instruction set,
so it is measured: on an AVX2-only CPU (e.g. AMD EPYC of family 25 model 1) PyTorch falls back to a
reference GEMM for bf16 convolutions (one training step of the phantom VAE on 2 such cores: 25.9 s in
bf16 against 1.23 s in fp32; research/vae_capacity.py --time-only, research/results_vae_cpu_avx2); on an
AMD EPYC with AVX512-BF16 bf16 was the faster path (sampling 13.0 vs 21.4 s per volume); on an
Intel Xeon (family 6 model 207) that reports AVX512-BF16 but no AMX it was slower (sampling
22.3-22.9 vs 14.3-15.5 s, a VAE step 0.83 vs 0.62 s; docs/benchmarks.md). `bf16_is_fast("cpu")` is
therefore False where oneDNN has no bf16 path, else a one-off timing of a convolution of the
phantom nets' size decides (bf16 must be `MIN_CPU_SPEEDUP` x faster); the environment variable
GUIDEGEN_CPU_BF16=1 / 0 overrides it (the same choice on every run of a machine).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")
CPU_BF16_ENV = "GUIDEGEN_CPU_BF16"
MIN_CPU_SPEEDUP = 1.2  # bf16 must beat fp32 by this factor on the CPU (it also costs precision)


def bf16_is_fast(device: torch.device | str) -> bool:
    """True where bf16 autocast speeds `device` up: CUDA with bf16; a CPU where GUIDEGEN_CPU_BF16
    says so, or else where oneDNN runs bf16 and `cpu_bf16_speedup` >= MIN_CPU_SPEEDUP."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if forced:
        raise ValueError(f"environment variable {CPU_BF16_ENV}={forced!r}: use 1 (bf16) or 0 (fp32), "
                         "or unset it (measured)")
    return onednn_bf16() and cpu_bf16_speedup(torch.get_num_threads()) >= MIN_CPU_SPEEDUP


def onednn_bf16() -> bool:
    """Whether oneDNN has a bf16 path on this CPU (if not, bf16 runs on a reference GEMM)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.cache
def cpu_bf16_speedup(threads: int) -> float:
    """fp32 time / bf16-autocast time of a 3x3 convolution of the phantom nets' size (16 x 64 x 32 x
    32, channels-last), best of 3 runs of 4, on `threads` threads (the cache key; ~0.1-0.3 s once per
    process). Uses its own generator: the global RNG is left as it was."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(64, 64, 3, 3, generator=g) / 24).contiguous(memory_format=torch.channels_last)

    def best(bf16: bool) -> float:
        times = []
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            F.conv2d(x, w, padding=1)  # warm-up (oneDNN primitive creation)
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(4):
                    F.conv2d(x, w, padding=1)
                times.append(time.perf_counter() - t0)
        return min(times)

    fp32, bf16 = best(False), best(True)
    speedup = fp32 / bf16
    log.info("CPU bf16 autocast: %.2fx the speed of fp32 on a conv of the phantom nets' size (%d threads): "
             "%s (set %s=1 or 0 to choose)", speedup, threads,
             "bf16" if speedup >= MIN_CPU_SPEEDUP else "fp32", CPU_BF16_ENV)
    return speedup


def fallback_precision(trainer: dict[str, Any], where: str) -> None:
    """A CPU run asked for a bf16 `trainer.precision` where bf16 is not faster on this CPU
    (`bf16_is_fast`): switch the (mutable) trainer config to "32-true" and say so (`where`: the
    config field, for the warning)."""
    precision = str(trainer.get("precision"))
    accelerator = str(trainer.get("accelerator") or "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if precision in BF16_PRECISIONS and on_cpu and not bf16_is_fast("cpu"):
        log.warning("%s %s: bf16 is not faster than fp32 on this CPU (%s; shared.runtime.bf16_is_fast, "
                    "%s=1 forces bf16): using 32-true", where, precision,
                    torch.backends.cpu.get_cpu_capability(), CPU_BF16_ENV)
        trainer["precision"] = "32-true"


def add_runtime_arguments(parser: Any) -> None:
    """`--num_threads` on a LightningCLI parser (read back by `apply_cli_runtime`)."""
    parser.add_argument("--num_threads", type=int | None, default=None,
                        help="torch.set_num_threads for CPU runs (None = torch's default)")


def apply_cli_runtime(config: dict[str, Any]) -> None:
    """A CLI's parsed config, before instantiation: `num_threads` -> torch.set_num_threads, and the
    bf16 precision fallback of `fallback_precision`."""
    if config.get("num_threads"):
        torch.set_num_threads(int(config["num_threads"]))
    fallback_precision(config["trainer"], "trainer.precision")
