"""Typed configs: unknown keys name the nearest valid key, wrong types are rejected with the key's
path, and ``key=value`` overrides are parsed and applied last."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from crysdistill.config import from_dict, load_config, merge, parse_overrides, read_yaml, to_dict
from crysdistill.data.graph import GraphSettings
from crysdistill.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10


@dataclass
class Run:
    name: str = "run"
    seed: int = 0
    optim: Optim = field(default_factory=Optim)
    mode: Literal["vanilla", "distill"] = "vanilla"
    layers: list[int] = field(default_factory=lambda: [64, 64])
    limit: int | None = None
    verbose: bool = False
    graph: GraphSettings = field(default_factory=GraphSettings)


def test_defaults_and_round_trip():
    cfg = from_dict(Run, {})
    assert cfg == Run()
    assert from_dict(Run, to_dict(cfg)) == cfg


@pytest.mark.parametrize(("data", "message"), [
    ({"seeed": 1}, "unknown config key 'seeed'; did you mean 'seed'?"),
    ({"optim": {"learning_rate": 1}}, "unknown config key 'optim.learning_rate'"),
    ({"optim": {"lr_": 1}}, "unknown config key 'optim.lr_'; did you mean 'lr'?"),
    ({"graph": {"cutof": 6}}, "unknown config key 'graph.cutof'; did you mean 'cutoff'?"),
    ({"zzz": 1}, "unknown config key 'zzz'; valid keys: graph, layers, limit, mode, name, optim, seed, verbose"),
])
def test_unknown_key_names_the_nearest(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Run, data)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(("data", "message"), [
    ({"seed": "abc"}, "seed: expected an integer, got 'abc'"),
    ({"seed": 1.5}, "seed: expected an integer, got 1.5"),
    ({"seed": True}, "seed: expected an integer, got True"),
    ({"optim": {"lr": "fast"}}, "optim.lr: expected a number, got 'fast'"),
    ({"optim": {"lr": True}}, "optim.lr: expected a number, got True"),
    ({"optim": 3}, "optim: expected a mapping, got 3"),
    ({"mode": "teacher"}, "mode: 'teacher' is not one of 'vanilla', 'distill'"),
    ({"layers": "a,b"}, "layers: expected an integer, got 'a'"),
    ({"layers": 5}, "layers: expected a list, got 5"),
    ({"verbose": "maybe"}, "verbose: expected true or false, got 'maybe'"),
    ({"limit": "ten"}, "limit: expected an integer, got 'ten'"),
    ({"name": ["x"]}, "name: expected a string, got ['x']"),
    ({"graph": {"cutoff": -1}}, "invalid graph settings"),
])
def test_type_errors(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Run, data)
    assert message in str(info.value)


def test_values_are_coerced():
    cfg = from_dict(Run, {"seed": 3.0, "optim": {"lr": "1e-4", "epochs": 5}, "layers": "32, 16",
                          "limit": None, "verbose": "yes", "name": 7, "graph": {"cutoff": 6}})
    assert cfg.seed == 3 and isinstance(cfg.seed, int)
    assert cfg.optim == Optim(lr=1e-4, epochs=5)
    assert cfg.layers == [32, 16] and cfg.limit is None and cfg.verbose is True and cfg.name == "7"
    assert cfg.graph == GraphSettings(cutoff=6.0) and isinstance(cfg.graph.cutoff, float)


def test_parse_overrides():
    assert parse_overrides(["optim.lr=1e-3", "seed=4", "verbose=true", "name=a=b", "layers=[8, 8]",
                            "limit=null", "mode="]) == {
        "optim": {"lr": "1e-3"}, "seed": 4, "verbose": True, "name": "a=b", "layers": [8, 8],
        "limit": None, "mode": ""}
    with pytest.raises(ConfigError, match=r"override 'seed' must look like key=value"):
        parse_overrides(["seed"])
    with pytest.raises(ConfigError, match="conflicts with an earlier one"):
        parse_overrides(["seed=1", "seed.x=2"])


def test_load_config_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: from-yaml\nseed: 1\noptim:\n  lr: 0.01\n  epochs: 3\n")
    cfg = load_config(Run, path, overrides=["optim.lr=1e-3", "graph.max_neighbors=8"],
                      extra={"seed": 2, "optim": {"epochs": 4}})
    assert cfg.name == "from-yaml" and cfg.seed == 2
    assert cfg.optim == Optim(lr=1e-3, epochs=4)
    assert cfg.graph.max_neighbors == 8
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'; did you mean 'lr'"):
        load_config(Run, path, overrides=["optim.lrr=1"])


def test_read_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        read_yaml(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        read_yaml(top)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) == {}


def test_merge_is_deep_and_pure():
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    assert merge(base, {"a": {"b": 5}, "e": 6}) == {"a": {"b": 5, "c": 2}, "d": 3, "e": 6}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3}


def test_config_error_is_a_user_error():
    """So the CLI prints it as one line and exits with code 2."""
    from crysdistill.errors import UserError

    assert issubclass(ConfigError, UserError) and ConfigError.exit_code == 2
