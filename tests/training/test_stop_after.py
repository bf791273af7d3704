"""`stop_after` in the run config (training/loop.py): the stopped run leaves a checkpoint at its stop step even
between checkpoint intervals, writes no trained outputs, and the config without stop_after resumes from there."""

import csv

import pytest

from wan22_jax.training.checkpoint import TrainCheckpointer
from wan22_jax.training.loop import train


# slow (about 40 s on 2 cores): two in-process runs, each compiling its step, held-out loss and encoder
@pytest.mark.slow
def test_stop_after_leaves_a_checkpoint_that_the_next_run_resumes_from(tiny_run, capsys):
    # no periodic checkpoint or eval before the end: the checkpoint at step 2 can only be stop_after's
    cfg = dict(tiny_run, steps=3, checkpoint={"every": 100, "keep": 2}, eval={"every": 100, "batch": 2})
    cfg["train"] = {**cfg["train"], "total_steps": 3}
    stopped = train(dict(cfg, stop_after=2))
    assert stopped["step"] == 2 and not stopped["interrupted"]
    ckpt = TrainCheckpointer(stopped["checkpoint_dir"])
    assert ckpt.all_steps() == [2]
    ckpt.close()
    assert not (stopped["out_dir"] / "dit").exists()  # stopped: not the trained result
    capsys.readouterr()
    resumed = train(cfg)
    assert "resumed from step 2" in capsys.readouterr().out
    assert resumed["step"] == 3 and (resumed["out_dir"] / "dit").is_dir()
    with open(resumed["out_dir"] / "loss.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3]
