"""stage2_ct.curves: several CSVLogger files drawn as one curve."""

from __future__ import annotations

from pathlib import Path

import pytest

from stage2_ct.curves import merge_metrics, plot_curves


def _csv(path: Path, rows: list[tuple[int, str, str]]) -> Path:
    path.write_text("epoch,step,train/loss,val/loss\n" + "".join(f"0,{s},{a},{b}\n" for s, a, b in rows))
    return path


def test_merge_metrics_offsets_and_orders(tmp_path: Path) -> None:
    first = _csv(tmp_path / "a.csv", [(19, "0.5", ""), (39, "0.4", ""), (39, "", "0.45")])
    second = _csv(tmp_path / "b.csv", [(19, "0.3", ""), (39, "", "0.35")])
    merged = merge_metrics([second, first], offsets=[40, 0])
    assert merged["train/loss"] == [(19, 0.5), (39, 0.4), (59, 0.3)]
    assert merged["val/loss"] == [(39, 0.45), (79, 0.35)]
    with pytest.raises(ValueError, match="1 step offsets for 2"):
        merge_metrics([first, second], offsets=[0])
    png = plot_curves([first, second], tmp_path / "c.png", offsets=[0, 40])
    assert png.read_bytes()[:4] == b"\x89PNG"
