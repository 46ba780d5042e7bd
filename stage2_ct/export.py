"""Export a slice-LDM checkpoint as component artifacts (what `on_train_end` does after a fit):

    python -m stage2_ct.export runs/stage2/ldm_phantom/checkpoints/last.ckpt --out weights/stage2_ldm_phantom

Useful when a run was stopped early. Checkpoints are read with torch.load(weights_only=True).
"""

from __future__ import annotations

import argparse
import inspect
import logging

import torch

from stage2_ct.ldm_module import SliceLDMModule, export_ldm, upgrade_state_dict

log = logging.getLogger(__name__)

RENAMED = {"aug_t": "prev_noise_t", "aug_max_t": "prev_noise_max_t"}  # old hyperparameter -> new


def export_checkpoint(ckpt: str, out: str, vae_path: str | None = None) -> None:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = dict(state["hyper_parameters"])
    for old, new in RENAMED.items():  # checkpoints of an older version
        if old in hp:
            hp[new] = hp.pop(old)
    known = inspect.signature(SliceLDMModule.__init__).parameters
    dropped = sorted(k for k in hp if k not in known and not k.startswith("_"))
    if dropped:  # options of an older version (e.g. organ_levels), no longer part of the model
        log.warning("%s: ignoring hyperparameters this version does not have: %s", ckpt, dropped)
    hp = {k: v for k, v in hp.items() if k in known}  # and no LightningCLI bookkeeping
    if vae_path is not None:
        hp["vae_path"] = vae_path
    module = SliceLDMModule(**hp)
    missing, unexpected = module.load_state_dict(upgrade_state_dict(state["state_dict"]), strict=False)
    bad = [k for k in missing if not k.startswith("model.vae.")] + list(unexpected)
    if bad:
        raise ValueError(f"{ckpt}: checkpoint does not fit SliceLDMModule ({bad[:5]})")
    module.trained_steps = int(state.get("global_step", 0))
    export_ldm(module, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export a slice-LDM checkpoint as artifacts")
    p.add_argument("ckpt")
    p.add_argument("--out", required=True)
    p.add_argument("--vae", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    export_checkpoint(a.ckpt, a.out, a.vae)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
