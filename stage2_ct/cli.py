"""LightningCLI of stage 2: `python -m stage2_ct fit|validate -c CONFIG [-c OVERRIDE]`.

One CLI for both LightningModules (`subclass_mode_model`): `configs/vae/*.yaml` train
`stage2_ct.vae_module.VAEModule`, `configs/ldm/*.yaml` train `stage2_ct.ldm_module.SliceLDMModule`.
omegaconf parser mode (interpolation). `num_classes` is linked from the data's label table.

`fit` of the LDM with `model.init_args.vae_path` missing (None or no such artifact) first trains
the VAE with `model.init_args.vae_config` (its export_path becomes vae_path) — that is what
`make train-stage2` relies on. `data.init_args.vae_path` follows the model's when unset.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from shared.cli import GuideGenCLI, run_cli
from stage2_ct.data import SliceDataModule

log = logging.getLogger(__name__)


def _artifact_exists(path: str | None) -> bool:
    return path is not None and Path(path).with_suffix(".safetensors").is_file()


class Stage2CLI(GuideGenCLI):
    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        config = self.subcommand_config()
        model = config["model"]
        if not str(model["class_path"]).endswith("SliceLDMModule"):
            return
        init = model["init_args"]
        if not _artifact_exists(init.get("vae_path")):
            if self.subcommand != "fit" or not init.get("vae_config"):
                raise FileNotFoundError(f"VAE artifact {init.get('vae_path')!r} not found and no "
                                        "vae_config to train one")
            init["vae_path"] = train_vae_first(init["vae_config"], init.get("vae_path"),
                                               config["data"].get("manifest"))
        if config["data"].get("vae_path") is None:
            config["data"]["vae_path"] = init["vae_path"]
        config["data"]["mode"] = "pairs"


def train_vae_first(vae_config: str | list[str], export_path: str | None,
                    manifest: str | None = None) -> str:
    """Run the VAE fit of `vae_config` (one config or a base + overrides) in-process on the same
    manifest; returns the exported artifact path."""
    args = ["fit"]
    for c in [vae_config] if isinstance(vae_config, str) else list(vae_config):
        args += ["-c", str(c)]
    if manifest is not None:
        args.append(f"--data.manifest={manifest}")
    if export_path is not None:
        args.append(f"--model.init_args.export_path={export_path}")
    log.info("no VAE artifact: training one first (%s)", " ".join(args))
    cli = main(args=args)
    path = cli.model.hparams.export_path
    if not _artifact_exists(path):
        raise RuntimeError(f"VAE training with {vae_config} did not export an artifact ({path})")
    return str(path)


def main(args: list[str] | None = None, run: bool = True) -> Stage2CLI:
    """Run the CLI; `args` instead of sys.argv (tests call this in-process)."""
    return run_cli(Stage2CLI, L.LightningModule, SliceDataModule, args, run, subclass_mode_model=True)
