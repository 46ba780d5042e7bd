"""LightningCLI entry of stage 1: `python -m stage1_mask fit|validate|test|predict -c CONFIG`.

Configs override a base (`-c configs/phantom.yaml -c configs/tiny.yaml`); omegaconf parser mode
(interpolation). `num_classes` and the class names come from labels.yaml through the data
module and are linked into the model; the grid is linked at parse time.
"""

from __future__ import annotations

import logging

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from shared.runtime import add_runtime_arguments, apply_cli_runtime
from stage1_mask.data import MaskDataModule
from stage1_mask.module import MaskDiffusionModule


class Stage1CLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_runtime_arguments(parser)
        parser.link_arguments("data.grid", "model.grid", apply_on="parse")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        apply_cli_runtime(config)


def main(args: list[str] | None = None, run: bool = True) -> Stage1CLI:
    """Run the CLI; `args` instead of sys.argv (tests call this in-process)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return Stage1CLI(
        MaskDiffusionModule,
        MaskDataModule,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
