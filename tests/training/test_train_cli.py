"""`wan22 train` config handling (no training): unknown fields and unreadable files are refused by name."""

import json

import pytest

from wan22_jax.cli import build_parser
from wan22_jax.errors import ConfigError
from wan22_jax.training.loop import train


def test_unknown_and_missing_fields_are_refused(tiny_run):
    with pytest.raises(ConfigError, match="learning_rate"):
        train(dict(tiny_run, learning_rate=1.0))
    cfg = dict(tiny_run)
    del cfg["steps"]
    with pytest.raises(ConfigError, match="'steps'"):
        train(cfg)
    with pytest.raises(ConfigError, match="warmup"):
        train(dict(tiny_run, train={"warmup": 3}))


def test_cli_reads_json(tmp_path):
    from wan22_jax import train_cli
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    args = build_parser().parse_args(["train", str(bad)])
    with pytest.raises(ConfigError, match="bad.json"):
        train_cli.main(args)
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        train_cli.main(build_parser().parse_args(["train", str(lst)]))
