"""Slow stage-2 checks (make test-slow): the evaluation script end to end on a tiny fit, and a
tiny LDM fit under DDP with 2 CPU processes (subprocess, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "stage2_ct" / "configs"

LDM_DDP = """
import sys
from pathlib import Path
from stage2_ct import cli

out = Path(sys.argv[1])
c = cli.main(args=[
    "fit", "-c", "stage2_ct/configs/ldm/phantom.yaml", "-c", "stage2_ct/configs/ldm/tiny.yaml",
    "--data.manifest=" + sys.argv[2], "--model.init_args.vae_path=" + sys.argv[3],
    "--trainer.devices=2", "--trainer.strategy=ddp_find_unused_parameters_true",
    "--trainer.max_steps=2",
    "--model.init_args.export_path=" + str(out / "ldm"),
])
(out / f"done_rank{c.trainer.global_rank}.txt").write_text(str(c.trainer.global_step))
"""


@pytest.mark.slow
def test_evaluate_script_and_ldm_ddp(tiny_phantom: Path, tmp_path: Path) -> None:
    from stage2_ct import cli, evaluate

    cli.main(args=["fit", "-c", str(CONFIGS / "ldm" / "phantom.yaml"), "-c", str(CONFIGS / "ldm" / "tiny.yaml"),
                   f"--data.manifest={tiny_phantom}", f"--model.init_args.vae_path={tmp_path / 'vae'}",
                   f"--model.init_args.export_path={tmp_path / 'ldm'}",
                   f"--trainer.default_root_dir={tmp_path}"])
    out = tmp_path / "eval"
    assert evaluate.main(["--manifest", str(tiny_phantom), "--vae", str(tmp_path / "vae"), "--ldm",
                          str(tmp_path / "ldm"), "--out", str(out), "--split", "train", "--n-cases", "2",
                          "--n-phase", "1", "--steps", "2"]) == 0
    result = json.loads((out / "stage2_eval.json").read_text())
    assert result["vae"]["hu_round_trip_max_error"] < 1e-9
    assert {"continuity_z_gradient_hu", "noise_residual_adjacent_corr", "phase", "fatty", "mask"} <= set(result["ldm"])
    assert (out / "stage2_eval.md").is_file()

    script = tmp_path / "ddp_ldm.py"
    script.write_text(LDM_DDP)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ddp_out = tmp_path / "ddp"
    ddp_out.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(ddp_out), str(tiny_phantom), str(tmp_path / "vae")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(ddp_out / f"done_rank{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
    assert (ddp_out / "ldm.safetensors").is_file()
