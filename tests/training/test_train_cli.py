"""`wan22 train` config handling (no training): unknown fields and unreadable files are refused by name."""

import json

import pytest

from wan22_jax.cli import build_parser
from wan22_jax.errors import ConfigError
from wan22_jax.training.loop import train
from wan22_jax.training.run_config import RunConfig, parse_run_config


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


@pytest.mark.parametrize("change,match", [
    ({"checkpoint": {"keep": "3"}}, r"training config checkpoint\.keep='3': must be a whole number >= 1"),
    ({"checkpoint": {"dir": 5}}, r"training config checkpoint\.dir=5: must be a string"),
    ({"eval": {"every": 0}}, r"training config eval\.every=0: must be a whole number >= 1"),
    ({"eval": {"interval": 3}}, r"unknown training config field\(s\) \['eval\.interval'\]"),
    ({"mesh": {"spec": "fsdp=two"}}, r"mesh spec 'fsdp=two'"),
    ({"mesh": "fsdp=2"}, r"training config 'mesh' must be an object"),
    ({"data": {"kind": "videos"}}, r"data\.kind='videos': one of \('world', 'cache'\)"),
    ({"world": {"clips": "many"}}, r"world\.clips='many': must be a whole number >= 1"),
    ({"train": {"moment_dtype": "fp16"}}, r"moment_dtype='fp16' is not a supported dtype"),
    ({"train": {"remat_policy": "some"}}, r"remat_policy 'some' is not one of"),
    ({"train": {"attention": "cpu"}}, r"attention 'cpu' is not one of"),
    ({"lora": {"rank": 2}}, r"lora=.*must be null or an object with a \"base\""),
    ({"lora": {"base": "x", "rank": 2, "ranks": 3}}, r"config lora: unknown config field\(s\) \['ranks'\]"),
    ({"progress": "yes"}, r"training config progress='yes': must be true or false"),
])
def test_typed_config_names_the_bad_field(tiny_run, change, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_config({**tiny_run, **change})


def test_typed_config_round_trips_and_fills_defaults(tiny_run):
    cfg = parse_run_config({**tiny_run, "lora": {"base": "dit", "rank": 2, "targets": ["head.head"]},
                            "mesh": {"spec": "fsdp=2"}})
    assert isinstance(cfg, RunConfig) and cfg.checkpoint.every == 2 and cfg.checkpoint.dir is None
    assert cfg.lora.base == "dit" and cfg.lora.adapter.rank == 2 and cfg.lora.adapter.targets == ("head.head",)
    assert cfg.data.kind == "world" and cfg.mesh.spec == "fsdp=2" and cfg.train.moment_dtype == "float32"
    doc = json.loads(json.dumps(cfg.to_dict()))
    assert doc["lora"] == {"base": "dit", "rank": 2, "alpha": 4.0, "targets": ["head.head"]}
    assert parse_run_config(doc) == cfg


def test_help_lists_every_section_and_field(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    for text in ("checkpoint:", "every: int (default 100)", "mesh:", "spec: str (default '')", "moment_dtype: str",
                 "remat_policy: str (default 'full')", "attention: str (default 'xla')", "data:",
                 "kind: str (default 'world')", "base: str (required)", "dit (required): DiTConfig fields"):
        assert text in out, text
