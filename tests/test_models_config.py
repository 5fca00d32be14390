"""Model configuration values are checked where they enter: one line naming key and value."""

from __future__ import annotations

import numpy as np
import pytest

from dmfnet.cli import main
from dmfnet.models import available_models, create_model
from dmfnet.models.config import ConfigError
from dmfnet.models.registry import check_model_config
from training_data import synthetic_flows, write_flow_file


@pytest.mark.parametrize(
    ("model", "config", "message"),
    [
        ("dmf", {"fusion_tokens": 0}, "fusion_tokens must be a positive integer, got 0"),
        ("dmf", {"channels": "abc"}, "channels must be a list of integers, got 'abc'"),
        ("dmf", {"channels": [8, "x", 32]}, "channels must be a list of integers"),
        ("dmf", {"channels": [0, 16, 32]}, "channels must be a non-empty list of positive"),
        ("dmf", {"channels": [8, 16]}, "one entry per stage, got [8, 16], [9, 7, 5]"),
        ("dmf", {"channels": [9, 16, 32]}, "divisible by fusion_heads (2)"),
        ("dmf", {"mlp_dropout": 2}, "mlp_dropout must be in [0, 1), got 2"),
        ("dmf", {"fusion_tokens": 4.5}, "fusion_tokens must be an integer, got 4.5"),
        ("dmf", {"deep_fusion": "yes"}, "deep_fusion must be true or false, got 'yes'"),
        ("dmf", {"fusion_dim": "wide"}, "fusion_dim must be an integer or null, got 'wide'"),
        ("dmf", {"length_scaling": "cube"}, "length_scaling must be one of sqrt, log, linear"),
        ("dmf", {"modalities": ["bytes", "iat"]}, "modalities must be one or both of"),
        ("dmf", {"gamma": -1}, "gamma must be 0 or more, got -1"),
        ("dmf-no-bytes", {"fusion_heads": 0}, "fusion_heads must be a positive integer"),
        ("cnn1d", {"pool": 0}, "pool must be a positive integer, got 0"),
        ("cnn1d", {"pool": 50}, "input_bytes must be at least pool^stages = 2500, got 784"),
        ("mimetic", {"dropout": 1.5}, "dropout must be in [0, 1), got 1.5"),
        ("appnet", {"conv_channels": []}, "conv_channels must be a non-empty list"),
        ("acid", {"min_silhouette": 2}, "min_silhouette must be in [-1, 1], got 2"),
        ("xgboost", {"subsample": 0}, "subsample must be in (0, 1], got 0"),
        ("xgboost", {"n_estimators": "many"}, "n_estimators must be an integer, got 'many'"),
    ],
)
def test_bad_values_name_the_key_and_the_value(model, config, message):
    with pytest.raises(ConfigError) as info:
        create_model(model, 3, **config)
    assert message in str(info.value)
    assert str(info.value).startswith(info.value.key)  # the key comes first
    with pytest.raises(ValueError):  # a ConfigError is a ValueError
        check_model_config(model, config)


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        create_model("dmf", 3, fusion_token=4)
    assert info.value.key == "fusion_token"
    assert "unknown key 'fusion_token'; known keys: " in str(info.value)
    assert "fusion_tokens" in str(info.value) and "num_classes" not in str(info.value)


def test_good_values_are_normalised():
    model = create_model("dmf", 3, channels=[8, 16, 32], mlp_dropout=0, fusion_dim=None)
    assert model.config.channels == (8, 16, 32) and model.config.mlp_dropout == 0
    trees = create_model("xgboost", 3, max_depth=np.int64(4), subsample=np.float32(0.5))
    assert type(trees.config.max_depth) is int and type(trees.config.subsample) is float
    for name in available_models():  # every default configuration passes its own checks
        create_model(name, 4)


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    return write_flow_file(synthetic_flows(n_per_class=10), root / "flows.parquet")


@pytest.mark.parametrize(
    ("item", "line"),
    [
        (
            "fusion_tokens=0",
            "--set fusion_tokens=0: fusion_tokens must be a positive integer, got 0",
        ),
        ("channels=abc", "--set channels=abc: channels must be a list of integers, got 'abc'"),
        ("nope=1", "--set nope=1: unknown key 'nope'; known keys: modalities,"),
        ("num_classes=3", "--set num_classes=3: num_classes cannot be set"),
    ],
)
def test_train_set_errors_are_one_line_exit_2_and_leave_no_run(flows, tmp_path, capsys, item, line):
    run = tmp_path / "run"
    assert main(["train", str(flows), "-o", str(run), "-q", "--set", item]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dmfnet train: error: {line}"), err
    assert not run.exists()


def test_benchmark_set_errors_name_the_model(flows, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", str(flows), "-o", str(out), "--models", "dmf,cnn1d", "--set"]
    assert main([*argv, "cnn1d:pool=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "dmfnet benchmark: error: --set cnn1d:pool=0: pool must be a positive integer, got 0"
    ]
    assert not out.exists()
