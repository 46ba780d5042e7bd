"""Export a stage-1 checkpoint's EMA sampler as a component artifact.

    python -m stage1_mask.export --ckpt runs/stage1/phantom/checkpoints/last.ckpt \\
        --out weights/stage1_phantom [--steps 25] [--guidance 2.0]

The checkpoint is read with torch.load(weights_only=True) (data, not code).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from shared.io.artifact import read_component_spec
from stage1_mask.module import MaskDiffusionModule
from stage1_mask.sampler import MaskSampling, export_stage1

log = logging.getLogger(__name__)


def module_from_checkpoint(path: str | Path) -> MaskDiffusionModule:
    """Rebuild the LightningModule from its hyper-parameters and load the weights (no pickle)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    if "stage1_unet_args" in ckpt:  # pin the UNet the checkpoint was trained with
        hparams["sampler"] = {**(hparams.get("sampler") or {}), "unet_overrides": ckpt["stage1_unet_args"]}
    artifact = hparams.get("text_encoder_artifact")
    sampler = hparams.get("sampler") or {}
    if not sampler.get("text_encoder") and any(k.startswith("model.text_encoder.") for k in ckpt["state_dict"]):
        # an attached (artifact) encoder: rebuild it from its recorded arguments, weights from the state
        args = ckpt.get("stage1_text_encoder_args")
        if args is None and artifact:
            args = read_component_spec(artifact)["init_args"]
        if args is None:
            raise ValueError(f"{path}: the text encoder's arguments are neither in the checkpoint "
                             f"nor readable from text_encoder_artifact={artifact!r}")
        hparams["sampler"] = {**sampler, "text_encoder": dict(args)}
    hparams["text_encoder_artifact"] = None  # weights (incl. an attached encoder) are in the state
    module = MaskDiffusionModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    module.spacing = ckpt.get("stage1_spacing")
    module.trained_steps = int(ckpt.get("global_step", 0))
    return module.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True, help="artifact stem, e.g. weights/stage1_phantom")
    parser.add_argument("--steps", type=int, default=None, help="default sampling steps to record")
    parser.add_argument("--guidance", type=float, default=None, help="default CFG scale to record")
    parser.add_argument("--prior-correction", type=float, default=None,
                        help="default logit-adjustment strength to record (sample_masks)")
    parser.add_argument("--size-control", choices=["expected", "argmax", "per_tumour", "off"], default=None,
                        help="default tumour size control to record (sample_masks, stage1_mask.size)")
    parser.add_argument("--text-artifact", default=None,
                        help="name of the external text-encoder artifact (then not embedded)")
    parser.add_argument("--fp32", action="store_true", help="store float32 (default float16)")
    parser.add_argument("--raw", action="store_true",
                        help="export the raw (non-EMA) weights: for short runs, where the 0.999 EMA "
                             "still averages over the early, undertrained weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = module_from_checkpoint(args.ckpt)
    meta = module.artifact_metadata()
    size = {None: None, "off": False}.get(args.size_control, args.size_control)
    inference = MaskSampling(steps=module.hparams.sample_steps, guidance=module.hparams.sample_guidance).override(
        steps=args.steps, guidance=args.guidance, prior_correction=args.prior_correction, size_control=size)
    meta["trained_steps"] = module.trained_steps
    meta["weights"] = "raw" if args.raw else "ema"
    stem = export_stage1(module.model if args.raw else module.ema_model, args.out, meta, args.text_artifact,
                         half=not args.fp32, inference=inference)
    log.info("wrote %s.{safetensors,yaml}", stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
