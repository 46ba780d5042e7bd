"""Tiny stage-2 VAE fit under DDP with 2 CPU processes (gloo), run in a subprocess: Lightning's
DDP relaunches sys.argv, which inside pytest would re-run pytest (DESIGN.md section 12).
Every rank must end with the same latent scale factor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from pathlib import Path
import torch
from stage2_ct import cli

out = Path(sys.argv[1])
c = cli.main(args=[
    "fit", "-c", "stage2_ct/configs/vae/phantom.yaml", "-c", "stage2_ct/configs/vae/tiny.yaml",
    "--data.manifest=" + sys.argv[2], "--trainer.devices=2", "--trainer.strategy=ddp",
    "--trainer.max_steps=2", "--model.init_args.export_path=" + str(out / "vae"),
])
rank = c.trainer.global_rank
(out / f"scale_rank{rank}.txt").write_text(repr(float(c.model.vae.latent_scale)))
"""


def test_vae_ddp_two_ranks_same_latent_scale(tiny_phantom: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_vae.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(tiny_phantom)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scales = [float((tmp_path / f"scale_rank{r}.txt").read_text()) for r in (0, 1)]
    assert scales[0] == scales[1] and scales[0] > 0
    assert (tmp_path / "vae.safetensors").is_file()
