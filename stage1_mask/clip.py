"""LightningCLI entry of the report <-> anatomy CLIP pretraining.

    python -m stage1_mask.clip fit -c stage1_mask/configs/clip/phantom.yaml
    python -m stage1_mask.clip fit -c stage1_mask/configs/clip/phantom.yaml -c stage1_mask/configs/clip/tiny.yaml

Data: stage 1's `MaskDataModule` (low-res labels cached in memory, small random shifts, no
flips). `num_classes` comes from labels.yaml through the data module; the grid is linked at
parse time. At the end of `fit` the module exports `model.export_path` (see clip_module).
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser

from shared.cli import GuideGenCLI, run_cli
from stage1_mask.clip_module import ClipModule
from stage1_mask.data import MaskDataModule


class ClipCLI(GuideGenCLI):
    def add_links(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.grid", "model.grid", apply_on="parse")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(args: list[str] | None = None, run: bool = True) -> ClipCLI:
    """Run the CLI; `args` instead of sys.argv (tests call this in-process)."""
    return run_cli(ClipCLI, ClipModule, MaskDataModule, args, run)


if __name__ == "__main__":
    main()
