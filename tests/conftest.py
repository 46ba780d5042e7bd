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


@pytest.fixture(scope="session")
def tiny_bundle(tiny_stage2: dict[str, Path], tmp_path_factory) -> Path:
    """bundle.yaml: a random-weight tiny stage 1 (16 x 16 x 8 at 24 x 24 x 50 mm) + the tiny LDM
    (CT grid 32 x 32 x 16 at 12 x 12 x 25 mm: the same extent)."""
    import torch

    from pipelines.bundle import make_bundle
    from shared.labels import default_labels
    from stage1_mask.sampler import MaskSampler, MaskSampling, export_stage1

    out = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    sampler = MaskSampler(12, unet_overrides=dict(channels=[8, 16, 32], num_res_blocks=[0, 1, 1],
                                                  attention_levels=[False, False, True], head_dim=8, norm_groups=4),
                          text_encoder=dict(text_cfg=dict(width=32, heads=2, layers=1), embed_dim=32),
                          scheduler=dict(num_train_timesteps=100)).eval()
    meta = {"grid": [16, 16, 8], "spacing": [24.0, 24.0, 50.0], "class_names": default_labels().names}
    export_stage1(sampler, out / "stage1", meta, inference=MaskSampling(steps=2, guidance=2.0))
    return make_bundle(out / "stage1", tiny_stage2["ldm"], out / "bundle.yaml", (32, 32, 16), name="tiny")
