"""Runtime settings shared by the CLIs and the samplers: threads, and where bf16 pays off (one
decision for autocast at sampling time and for Lightning's precision).

bf16 autocast is fast on CUDA GPUs with bf16 and on CPUs that oneDNN runs bf16 on natively
(AVX-512 BW/VL/DQ, AVX512-BF16, AMX; ARM with bf16). On an AVX2-only CPU (e.g. AMD EPYC of family
25 model 1) PyTorch falls back to a reference GEMM for bf16 convolutions: on 2 such cores one
training step of the phantom VAE took 25.9 s in bf16 against 1.23 s in fp32
(bench/vae_capacity.py --time-only, bench/results/vae_cpu_avx2).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")


def bf16_is_fast(device: torch.device | str) -> bool:
    """True where bf16 autocast speeds `device` up (CUDA with bf16; a CPU with native bf16)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def fallback_precision(trainer: dict[str, Any], where: str) -> None:
    """A CPU run asked for a bf16 `trainer.precision` on a CPU without native bf16: switch the
    (mutable) trainer config to "32-true" and say so (`where`: the config field, for the warning)."""
    precision = str(trainer.get("precision"))
    accelerator = str(trainer.get("accelerator") or "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if precision in BF16_PRECISIONS and on_cpu and not bf16_is_fast("cpu"):
        log.warning("%s %s on a CPU without native bf16 (%s) runs ~20x slower than fp32: using 32-true",
                    where, precision, torch.backends.cpu.get_cpu_capability())
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
