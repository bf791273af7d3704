"""Training metrics: CSV rows, TensorBoard events readable back, MFU from the FLOP model, resume trimming."""

import csv

import pytest

from wan22_jax.flops import dit_forward_flops
from wan22_jax.training.metrics import CSV_NAME, TB_DIR, MetricsLogger, read_scalars, train_flops

from .conftest import TINY_DIT


def _rows(path):
    with open(path / CSV_NAME, newline="") as f:
        return list(csv.DictReader(f))


def test_train_flops_is_three_forwards_per_sample():
    fwd = dit_forward_flops(TINY_DIT, (3, 4, 4), batch=1)
    assert train_flops(TINY_DIT, (2, 3, 4, 3, 4, 4)) == 3 * 6 * fwd  # 2 micro-batches x 3 samples
    assert train_flops(TINY_DIT, (5, 4, 3, 4, 4)) == 3 * 5 * fwd


def test_csv_and_tensorboard_events(tmp_path):
    with MetricsLogger(tmp_path, peak_flops=1e12) as m:
        for step in range(1, 4):
            row = m.log(step, loss=1.0 / step, grad_norm=0.5, lr=1e-4 * step, samples=8, flops=2e9)
            assert row["samples_per_s"] > 0 and row["mfu"] == pytest.approx(row["tflops_per_s"])
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert float(rows[1]["loss"]) == 0.5 and float(rows[2]["lr"]) == pytest.approx(3e-4)
    scalars = read_scalars(tmp_path / TB_DIR)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([1.0, 0.5, 1 / 3], rel=1e-6)
    assert set(scalars) == {"train/loss", "train/grad_norm", "train/lr", "perf/samples_per_s",
                            "perf/tflops_per_s", "perf/mfu"}
    # a run resumed from step 1 logs steps 2.. again: TensorBoard shows the new values only
    with MetricsLogger(tmp_path, resume_step=1) as m:
        m.log(2, loss=7.0, grad_norm=0.5, lr=1e-4, samples=8)
    assert read_scalars(tmp_path / TB_DIR)["train/loss"] == [(1, 1.0), (2, 7.0)]
    assert [int(r["step"]) for r in _rows(tmp_path)] == [1, 2]


def test_unknown_peak_leaves_mfu_empty_and_resume_trims(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        for step in range(1, 5):
            assert m.log(step, loss=1.0, grad_norm=1.0, lr=1.0, samples=2, flops=1e6)["mfu"] is None
    assert _rows(tmp_path)[0]["mfu"] == ""
    with MetricsLogger(tmp_path, resume_step=2, tensorboard=False) as m:  # steps 3, 4 are done again
        m.log(3, loss=2.0, grad_norm=1.0, lr=1.0, samples=2)
    assert [(r["step"], r["loss"]) for r in _rows(tmp_path)] == [("1", "1"), ("2", "1"), ("3", "2")]


def test_disabled_logger_writes_nothing(tmp_path):
    m = MetricsLogger(tmp_path / "run", enabled=False)
    m.log(1, loss=1.0, grad_norm=1.0, lr=1.0, samples=1)
    m.close()
    assert not (tmp_path / "run").exists()
