"""LightningCLI entry of the report <-> anatomy CLIP pretraining.

    python -m stage1_mask.clip fit -c stage1_mask/configs/clip/phantom.yaml
    python -m stage1_mask.clip fit -c stage1_mask/configs/clip/phantom.yaml -c stage1_mask/configs/clip/tiny.yaml

Data: stage 1's `MaskDataModule` (low-res labels cached in memory, small random shifts, no
flips). `num_classes` comes from labels.yaml through the data module; the grid is linked at
parse time. At the end of `fit` the module exports `model.export_path` (see clip_module).
"""

from __future__ import annotations

import logging

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from shared.runtime import add_runtime_arguments, apply_cli_runtime
from stage1_mask.clip_module import ClipModule
from stage1_mask.data import MaskDataModule


class ClipCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_runtime_arguments(parser)
        parser.link_arguments("data.grid", "model.grid", apply_on="parse")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        apply_cli_runtime(config)


def main(args: list[str] | None = None, run: bool = True) -> ClipCLI:
    """Run the CLI; `args` instead of sys.argv (tests call this in-process)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return ClipCLI(
        ClipModule,
        MaskDataModule,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
