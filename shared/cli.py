"""The LightningCLI every training entry shares (stage 1, the text CLIP, stage 2).

`GuideGenCLI` adds `--num_threads` and, before the classes are built, applies it and the CPU bf16
fallback (shared.runtime); `run_cli` starts one in omegaconf parser mode (interpolation in
configs), overwriting the saved config of a resumed run. Subclasses add their argument links in
`add_links` and may extend `before_instantiate_classes`.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from shared.runtime import add_runtime_arguments, apply_cli_runtime


class GuideGenCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_runtime_arguments(parser)
        self.add_links(parser)

    def add_links(self, parser: LightningArgumentParser) -> None:
        """`parser.link_arguments(...)` of the subclass (none here)."""

    def subcommand_config(self) -> Any:
        """The parsed config of the running subcommand (fit, validate, ...)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        apply_cli_runtime(self.subcommand_config())


def run_cli(cli: type[GuideGenCLI], model: Any, data: Any, args: list[str] | None = None, run: bool = True,
            **kwargs: Any) -> GuideGenCLI:
    """Run `cli`; `args` instead of sys.argv (tests call it in-process)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return cli(model, data, parser_kwargs={"parser_mode": "omegaconf"}, save_config_kwargs={"overwrite": True},
               args=args, run=run, **kwargs)
