"""`guidegen-export`: a bundle from your trained components (artifacts or Lightning checkpoints).

    guidegen-export --stage1 runs/stage1/phantom/checkpoints/last.ckpt \\
        --ldm runs/stage2/ldm_phantom/checkpoints/last.ckpt --vae weights/stage2_vae_phantom \\
        --ct-grid 128 128 80 --out my_bundle/

A `.ckpt` is read with torch.load(weights_only=True) (data, not code) and exported into OUT as a
component artifact (stage 1: its EMA sampler with the text encoder embedded and tumour size
control on, as the default bundle samples; the LDM: its EMA UNet, text encoder and class map, with
the VAE artifact copied beside it). An artifact stem is referenced where it is. OUT/bundle.yaml
then names every component with its sha256 (pipelines.bundle); `guidegen-generate --bundle
OUT/bundle.yaml` uses it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from pipelines.bundle import BundleError, load_bundle, make_bundle
from shared.io.artifact import artifact_stem, read_component_spec

log = logging.getLogger(__name__)


def export_stage1(src: Path, out: Path) -> Path:
    """A stage-1 artifact stem for `src` (a checkpoint is exported to OUT/stage1)."""
    if src.suffix != ".ckpt":
        return artifact_stem(src)
    from stage1_mask import export

    export.main(["--ckpt", str(src), "--out", str(out / "stage1"), "--size-control", "per_tumour"])
    return out / "stage1"


def export_ldm(src: Path, vae: Path | None, out: Path) -> Path:
    """An LDM artifact stem for `src` (a checkpoint is exported to OUT/ldm, its VAE copied beside it)."""
    if src.suffix != ".ckpt":
        if vae is not None:
            raise BundleError("--vae goes with an LDM checkpoint; an LDM artifact names its own VAE")
        return artifact_stem(src)
    import torch

    from stage2_ct.export import export_checkpoint

    if vae is None:
        hp = torch.load(src, map_location="cpu", weights_only=True)["hyper_parameters"]
        if not hp.get("vae_path"):
            raise BundleError(f"{src}: names no VAE (model.vae_path): pass --vae")
        vae = Path(hp["vae_path"])
    vae = artifact_stem(vae)
    read_component_spec(vae)  # a clear error for a missing VAE before anything is written
    for suffix in (".yaml", ".safetensors"):
        shutil.copyfile(vae.with_suffix(suffix), (out / "vae").with_suffix(suffix))
    export_checkpoint(str(src), str(out / "ldm"), vae_path=str(out / "vae"))
    return out / "ldm"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="guidegen-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage1", required=True, type=Path, help="stage-1 artifact stem or .ckpt")
    p.add_argument("--ldm", required=True, type=Path, help="stage-2 LDM artifact stem or .ckpt")
    p.add_argument("--vae", type=Path, default=None, help="VAE artifact of an LDM checkpoint (default: its vae_path)")
    p.add_argument("--ct-grid", type=int, nargs=3, required=True, metavar=("X", "Y", "Z"),
                   help="CT grid; the stage-1 grid times its spacing gives the field of view")
    p.add_argument("--out", type=Path, required=True, help="bundle folder (bundle.yaml + exported components)")
    p.add_argument("--name", default="guidegen-bundle")
    p.add_argument("--description", default="")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        a.out.mkdir(parents=True, exist_ok=True)
        stage1 = export_stage1(a.stage1, a.out)
        ldm = export_ldm(a.ldm, a.vae, a.out)
        bundle = make_bundle(stage1, ldm, a.out / "bundle.yaml", tuple(a.ct_grid), a.name, a.description)
        load_bundle(bundle)
    except (BundleError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"guidegen-export: {e}", file=sys.stderr)
        return 2
    print(bundle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
