"""Every committed stage-2 config stack parses through the CLI, and the recipes resolve to what
their comments and docs/stage2.md say they run."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "stage2_ct" / "configs"
STACKS = {
    "vae": [[], ["tiny"], ["full"], ["phantom_lat12"], ["phantom_lat12_1h"], ["phantom_decoder_ft"],
            ["phantom_decoder_ft", "phantom_decoder_ft2"], ["phantom_decoder_ft", "phantom_decoder_ft3"]],
    "ldm": [[], ["tiny"], ["full"], ["phantom_lat12"], ["phantom_lat12_1h"], ["phantom_levels_ft"]],
}


def resolved(kind: str, extra: list[str], *overrides: str) -> dict[str, Any]:
    """The config that `python -m stage2_ct fit -c {kind}/phantom.yaml -c ...` would run."""
    from stage2_ct import cli

    files = [CONFIGS / kind / f"{name}.yaml" for name in ["phantom", *extra]]
    args = ["fit", *[a for f in files for a in ("-c", str(f))], *overrides, "--print_config"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main(args=args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize(("kind", "extra"), [(k, e) for k, stacks in STACKS.items() for e in stacks],
                         ids=lambda v: "+".join(v) if isinstance(v, list) else v)
def test_config_stack_parses(kind: str, extra: list[str]) -> None:
    cfg = resolved(kind, extra)
    expected = "VAEModule" if kind == "vae" else "SliceLDMModule"
    assert cfg["model"]["class_path"].endswith(expected)
    assert cfg["trainer"]["max_steps"] > 0


def checkpoint_dirs(cfg: dict[str, Any]) -> list[str]:
    return [c["init_args"]["dirpath"] for c in cfg["trainer"]["callbacks"]
            if c["class_path"].endswith("ModelCheckpoint")]


def test_decoder_fine_tuning_recipes_resolve_as_documented() -> None:
    """phantom_decoder_ft.yaml: one 8,000-step cosine from the artifact, refined in place; ft2 on
    top: lr 2e-4 decaying over 2,600 steps, in its own run folder (a list in an overlay replaces
    the base's, so no checkpoint of the first run is touched). Part a of the shipped second run
    (the Makefile's overrides) decays over 8,000 steps. ft3: lr 6e-5 over 1,500 steps, own folder."""
    ft = resolved("vae", ["phantom_decoder_ft"])["model"]["init_args"]
    assert ft["freeze_encoder"] and ft["init_from"] == ft["export_path"] == "weights/stage2_vae_phantom"
    assert ft["decay_steps"] == 8000 and ft["lr"] == pytest.approx(5e-4)

    cfg = resolved("vae", ["phantom_decoder_ft", "phantom_decoder_ft2"])
    ft2 = cfg["model"]["init_args"]
    assert ft2["freeze_encoder"] and ft2["init_from"] == ft2["export_path"] == "weights/stage2_vae_phantom"
    assert ft2["decay_steps"] == cfg["trainer"]["max_steps"] == 2600 and ft2["lr"] == pytest.approx(2e-4)
    assert checkpoint_dirs(cfg) == ["runs/stage2/vae_phantom_ft2/checkpoints"]
    assert cfg["ckpt_path"] == "last"

    part_a = resolved("vae", ["phantom_decoder_ft", "phantom_decoder_ft2"],
                      "--trainer.max_steps", "1500", "--model.decay_steps", "8000")
    assert part_a["trainer"]["max_steps"] == 1500 and part_a["model"]["init_args"]["decay_steps"] == 8000

    cfg = resolved("vae", ["phantom_decoder_ft", "phantom_decoder_ft3"])  # the third cosine
    ft3 = cfg["model"]["init_args"]
    assert ft3["freeze_encoder"] and ft3["init_from"] == ft3["export_path"] == "weights/stage2_vae_phantom"
    assert ft3["decay_steps"] == cfg["trainer"]["max_steps"] == 1500 and ft3["lr"] == pytest.approx(6e-5)
    assert checkpoint_dirs(cfg) == ["runs/stage2/vae_phantom_ft3/checkpoints"]


def test_level_fine_tuning_recipe_resolves_as_documented() -> None:
    """phantom_levels_ft.yaml: the shipped LDM's weights start a fit with per-volume levels, a
    cosine over all its steps, in its own run folder."""
    cfg = resolved("ldm", ["phantom_levels_ft"])
    ft = cfg["model"]["init_args"]
    assert ft["organ_levels"] and ft["class_embed_dim"] > 0 and ft["init_from"] == "weights/stage2_ldm_phantom"
    assert ft["decay_steps"] == cfg["trainer"]["max_steps"] and ft["level_lr"] > ft["lr"]
    assert checkpoint_dirs(cfg) == ["runs/stage2/ldm_levels_ft/checkpoints"]


def test_one_hour_lat12_pair_resolves_as_documented() -> None:
    """phantom_lat12_1h.yaml: the 12-channel recipe (soft-tissue weight 8, lr 2e-3) with its cosine
    over 6,500 steps in channels-last format, to its own artifact and run folder; the LDM overlay
    trains on exactly that artifact (and names the VAE stack that makes it)."""
    cfg = resolved("vae", ["phantom_lat12_1h"])
    vae = cfg["model"]["init_args"]
    assert vae["vae"]["latent_channels"] == 12 and vae["soft_weight"] == 8.0 and vae["lr"] == pytest.approx(2e-3)
    assert vae["decay_steps"] == cfg["trainer"]["max_steps"] == 6500 and vae["channels_last"]
    assert vae["export_path"] == "weights/stage2_vae_phantom_lat12_1h" and not vae["freeze_encoder"]
    assert checkpoint_dirs(cfg) == ["runs/stage2/vae_phantom_lat12_1h/checkpoints"]

    ldm_cfg = resolved("ldm", ["phantom_lat12_1h"])
    ldm = ldm_cfg["model"]["init_args"]
    assert ldm["vae_path"] == vae["export_path"] and ldm["latent_channels"] == 12
    assert ldm["vae_config"] == ["stage2_ct/configs/vae/phantom.yaml", "stage2_ct/configs/vae/phantom_lat12_1h.yaml"]
    assert ldm["export_path"] == "weights/stage2_ldm_phantom_lat12_1h"
    assert checkpoint_dirs(ldm_cfg) == ["runs/stage2/ldm_phantom_lat12_1h/checkpoints"]
