"""Session-wide fixtures: one tiny phantom dataset shared by the tests (DESIGN.md section 12)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """Manifest of 10 phantom cases on the small test grid (32 x 32 x 16 at 12 x 12 x 25 mm)."""
    from shared.data.build import build_dataset

    logging.getLogger("shared").setLevel(logging.WARNING)
    root = tmp_path_factory.mktemp("phantom_small")
    return build_dataset(root, n_cases=10, jobs=1, seed=0, grid="small")


@pytest.fixture(scope="session")
def tiny_stage2(tiny_phantom: Path, tmp_path_factory) -> dict[str, Path]:
    """Tiny LDM fit via the CLI in-process (3 steps); the VAE artifact is missing, so it trains one first."""
    from stage2_ct import cli

    configs = Path(__file__).resolve().parents[1] / "stage2_ct" / "configs"
    out = tmp_path_factory.mktemp("stage2")
    cli.main(args=[
        "fit", "-c", str(configs / "ldm" / "phantom.yaml"), "-c", str(configs / "ldm" / "tiny.yaml"),
        f"--data.manifest={tiny_phantom}",
        f"--model.init_args.vae_path={out / 'vae'}",
        f"--model.init_args.export_path={out / 'ldm'}",
        f"--trainer.default_root_dir={out}",
    ])
    return {"vae": out / "vae", "ldm": out / "ldm", "manifest": tiny_phantom}
