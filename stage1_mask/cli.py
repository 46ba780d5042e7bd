"""LightningCLI entry of stage 1: `python -m stage1_mask fit|validate|test|predict -c CONFIG`.

Configs override a base (`-c configs/phantom.yaml -c configs/tiny.yaml`); omegaconf parser mode
(interpolation). `num_classes` and the class names come from labels.yaml through the data
module and are linked into the model; the grid is linked at parse time.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser

from shared.cli import GuideGenCLI, run_cli
from stage1_mask.data import MaskDataModule
from stage1_mask.module import MaskDiffusionModule


class Stage1CLI(GuideGenCLI):
    def add_links(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.grid", "model.grid", apply_on="parse")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")


def main(args: list[str] | None = None, run: bool = True) -> Stage1CLI:
    """Run the CLI; `args` instead of sys.argv (tests call this in-process)."""
    return run_cli(Stage1CLI, MaskDiffusionModule, MaskDataModule, args, run)
