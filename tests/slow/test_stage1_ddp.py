"""Stage 1 under DDP: 2 CPU processes (gloo) through a subprocess, then a resumed run.

Lightning's DDP relaunches sys.argv, so the fit runs in `python -m stage1_mask`, never inside
the pytest process (DESIGN.md section 12).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "stage1_mask" / "configs"


def _fit(manifest: Path, root: Path, max_steps: int) -> subprocess.CompletedProcess:
    callbacks = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": str(root / "ckpt"), "save_last": True,
                                           "save_top_k": 0, "every_n_train_steps": 1}}])
    cmd = [sys.executable, "-m", "stage1_mask", "fit", "-c", str(CONFIGS / "phantom.yaml"),
           "-c", str(CONFIGS / "tiny.yaml"), "--data.manifest", str(manifest),
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
           "--trainer.max_steps", str(max_steps), "--trainer.max_epochs", "10", "--trainer.limit_val_batches", "1",
           "--trainer.default_root_dir", str(root), "--trainer.callbacks", callbacks,
           "--ckpt_path", "last"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONFIGS.parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                          cwd=CONFIGS.parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_ddp_two_processes_fit_and_resume(tiny_phantom: Path, tmp_path: Path) -> None:
    first = _fit(tiny_phantom, tmp_path, max_steps=2)
    assert "Starting with 2 processes" in first.stderr + first.stdout
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    second = _fit(tiny_phantom, tmp_path, max_steps=4)
    assert "Restoring states from the checkpoint" in second.stderr + second.stdout
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    assert int(state["state_dict"]["ema_updates"]) == 4
