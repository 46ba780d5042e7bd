"""Every committed stage-2 config stack parses through the CLI, and the recipes resolve to what
their comments and research/stage2_log.md say they run."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "stage2_ct" / "configs"
STACKS = {
    "vae": [[], ["tiny"], ["full"]],
    "ldm": [[], ["tiny"], ["full"]],
}


def resolved(kind: str, extra: list[str], *overrides: str) -> dict[str, Any]:
    """The config that `python -m stage2_ct fit -c {kind}/phantom.yaml -c ...` would run."""
    return resolved_files([CONFIGS / kind / f"{name}.yaml" for name in ["phantom", *extra]], *overrides)


def resolved_files(files: list[Path], *overrides: str) -> dict[str, Any]:
    """The config that `python -m stage2_ct fit -c FILE -c ...` would run."""
    from stage2_ct import cli

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


def test_shipped_pair_resolves_as_documented() -> None:
    """The phantom base configs are the shipped pair's recipe (research/stage2_log.md): the 12-channel VAE
    (soft-tissue weight 8, lr 2e-3) with one cosine over 6,500 steps, the LDM on exactly that
    artifact with one cosine over 8,500 steps, both channels-last."""
    cfg = resolved("vae", [])
    vae = cfg["model"]["init_args"]
    assert vae["vae"]["latent_channels"] == 12 and vae["soft_weight"] == 8.0 and vae["lr"] == pytest.approx(2e-3)
    assert vae["decay_steps"] == cfg["trainer"]["max_steps"] == 6500 and vae["channels_last"]
    assert vae["export_path"] == "weights/stage2_vae_phantom" and not vae["freeze_encoder"]

    ldm_cfg = resolved("ldm", [])
    ldm = ldm_cfg["model"]["init_args"]
    assert ldm["vae_path"] == vae["export_path"] and ldm["latent_channels"] == 12 and ldm["channels_last"]
    assert ldm["decay_steps"] == ldm_cfg["trainer"]["max_steps"] == 8500
    assert ldm["export_path"] == "weights/stage2_ldm_phantom"


@pytest.mark.parametrize(("kind", "extra"), [(k, e) for k, stacks in STACKS.items() for e in stacks if e != ["tiny"]],
                         ids=lambda v: "+".join(v) if isinstance(v, list) else v)
def test_every_recipe_decays_over_its_own_steps(kind: str, extra: list[str]) -> None:
    """The base's `decay_steps: ${trainer.max_steps}` resolves inside the base file, so an overlay
    that changes max_steps must set decay_steps too (the trap hit twice): each committed stack's
    cosine ends at its own last step."""
    cfg = resolved(kind, extra)
    assert cfg["model"]["init_args"]["decay_steps"] == cfg["trainer"]["max_steps"]


@pytest.mark.parametrize("extra", STACKS["ldm"],
                         ids=lambda v: "+".join(v) or "phantom")
def test_ldm_latent_channels_match_its_vae_stack(extra: list[str]) -> None:
    """An LDM stack's latent_channels equals those of the VAE stack that trains its vae_path
    (fit would stop with an error after the VAE was trained)."""
    ldm = resolved("ldm", extra)["model"]["init_args"]
    vae_files = ldm["vae_config"] if isinstance(ldm["vae_config"], list) else [ldm["vae_config"]]
    vae = resolved_files([CONFIGS.parents[1] / f for f in vae_files])["model"]["init_args"]
    assert ldm["latent_channels"] == vae["vae"]["latent_channels"]
    assert ldm["vae_path"] == vae["export_path"]


def test_shipped_weights_match_the_phantom_configs() -> None:
    """The committed stage-2 artifacts are what the phantom configs build: the VAE's net, the LDM's
    latent channels, UNet widths and inference defaults, and the components the LDM names exist
    beside it."""
    from shared.io.artifact import read_component_spec

    weights = CONFIGS.parents[1] / "weights"
    vae_spec = read_component_spec(weights / "stage2_vae_phantom")
    ldm_spec = read_component_spec(weights / "stage2_ldm_phantom")
    vae_cfg = resolved("vae", [])["model"]["init_args"]["vae"]
    ldm_cfg = resolved("ldm", [])["model"]["init_args"]
    for key in ("latent_channels", "channels", "num_res_blocks"):
        assert vae_spec["init_args"][key] == vae_cfg[key], key
    meta = ldm_spec["metadata"]
    assert meta["latent_channels"] == ldm_cfg["latent_channels"] == vae_spec["metadata"]["latent_channels"]
    assert ldm_spec["init_args"]["channels"] == ldm_cfg["unet_overrides"]["channels"]
    assert meta["vae"] == "stage2_vae_phantom" and meta["trained_steps"] == 8500
    assert meta["prev_noise_max_t"] == ldm_cfg["prev_noise_max_t"]
    inference = ldm_spec["inference"]
    for key, cfg_key in (("prev_noise_t", "prev_noise_t"), ("guidance", "guidance"), ("noise_corr", "noise_corr"),
                         ("steps", "sample_steps"), ("level_sigma", "level_sigma")):
        assert inference[key] == ldm_cfg[cfg_key], f"inference {key}: artifact {inference[key]} != config {ldm_cfg[cfg_key]}"
    for name in (meta["text_encoder"], meta["class_embed"]):
        assert (weights / f"{name}.safetensors").is_file() and (weights / f"{name}.yaml").is_file(), name
