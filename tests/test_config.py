import pytest

from cifar_mlp import UserError
from cifar_mlp.config import Config, from_dict, load, parse_override, preset_names


def test_seed_preset_is_the_seed_recipe():
    cfg = load("seed")
    assert cfg.model.widths == [512, 256, 128] and cfg.model.dropout == 0.2
    assert (cfg.model.norm, cfg.model.activation, cfg.model.order) == ("batch", "relu", "act-norm")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == (80, 2024, 1e-6)
    assert cfg.optim.weight_decay == 0.01 and cfg.optim.schedule == "none" and cfg.data.augment == []
    assert cfg.data.val_per_class == 500


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates(name):
    assert isinstance(load(name), Config)


def test_overrides_and_toml_values():
    cfg = load("seed", ["model.widths=[1024, 512]", "optim.lr=3e-3", "train.device=cpu", "optim.schedule=cosine"])
    assert cfg.model.widths == [1024, 512] and cfg.optim.lr == 3e-3
    assert cfg.train.device == "cpu" and cfg.optim.schedule == "cosine"
    assert load("seed", ["optim.lr=1"]).optim.lr == 1.0  # an int is accepted where a float is expected


def test_config_from_a_toml_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[train]\nepochs = 3\n")
    assert load(str(path)).train.epochs == 3


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"epochs": 0}}, r"train.epochs must be a finite number in \[1, 1,000,000\], got 0"),
        ({"optim": {"lr": -1.0}}, r"optim.lr must be a finite number in \(0, 1,000.0\], got -1.0"),
        ({"train": {"batch_size": "big"}}, "train.batch_size must be of type int"),
        ({"train": {"epochs": True}}, "train.epochs must be of type int"),
        ({"train": {"epoch": 3}}, "unknown key train.epoch"),
        ({"trainer": {}}, r"unknown section \[trainer\]"),
        ({"model": {"widths": [512, "x"]}}, r"model.widths\[1\] must be of type int"),
        ({"model": {"widths": []}}, "non-empty list"),
        ({"model": {"norm": "group"}}, "model.norm must be one of batch, layer, none"),
        ({"model": {"dropout": 1.0}}, r"dropout must be a finite number in \[0, 1\)"),
        ({"data": {"augment": ["rotate"]}}, "data.augment accepts"),
        ({"data": {"augment": ["affine"], "rotate": float("nan")}}, r"data.rotate must be a finite number in \[0, 180"),
        ({"data": {"zoom": 0.6}}, r"data.zoom must be a finite number in \[0, 0.5\]"),
        ({"data": {"colour": -0.1}}, r"data.colour must be a finite number in \[0, 1\]"),
        ({"optim": {"warmup_epochs": 100.0}}, "exceeds train.epochs"),
        ({"data": {"clean_epochs": 100}}, r"data.clean_epochs \(100\) exceeds train.epochs"),
        ({"data": {"clean_epochs": -1}}, r"data.clean_epochs must be a finite number in \[0, "),
        ({"train": {"dropout_off_epochs": 100}}, r"train.dropout_off_epochs \(100\) exceeds train.epochs"),
        ({"train": {"dropout_off_epochs": -1}}, r"train.dropout_off_epochs must be a finite number in \[0, "),
        ({"optim": {"ema_decay": 1.0}}, r"optim.ema_decay must be a finite number in \[0, 1\)"),
        ({"data": {"mix": "mosaic"}}, "data.mix must be one of cutmix, mixup, none"),
        ({"data": {"mix_alpha": 0.0}}, r"data.mix_alpha must be a finite number in \(0, "),
        ({"model": {"input_dropout": -0.1}}, r"model.input_dropout must be a finite number in \[0, 1\)"),
        ({"optim": {"sam_rho": -0.05}}, r"optim.sam_rho must be a finite number in \[0, "),
        ({"model": {"members": 0}}, r"model.members must be a finite number in \[1, 1,000\]"),
        ({"model": {"bottleneck": -1}}, r"model.bottleneck must be a finite number in \[0, "),
        ({"model": {"bottleneck": 1.5}}, "model.bottleneck must be of type int"),
        ({"model": {"pretrain_epochs": -1}}, r"model.pretrain_epochs must be a finite number in \[0, "),
        ({"model": {"pretrain_threshold": float("nan")}}, r"model.pretrain_threshold must be a finite number"),
        ({"model": {"architecture": "cnn", "widths": [8, 8, 8], "pretrain_epochs": 5}},
         "model.pretrain_epochs is an MLP option; the cnn comparator does not use it"),
        ({"optim": {"optimizer": "adam"}}, "optim.optimizer must be one of adamw, lion, muon, sgd"),
        ({"optim": {"momentum": 1.0}}, r"optim.momentum must be a finite number in \[0, 1\)"),
        ({"model": {"architecture": "cnn", "widths": [8, 8, 8]}, "optim": {"optimizer": "muon"}},
         "the cnn comparator's are convolution filters; use adamw or sgd"),
        ({"train": {"recalibrate_norm": -5}}, r"train.recalibrate_norm must be a finite number in \[0, "),
        ({"train": {"recalibrate_norm": 1}}, "need at least 2 images; use 2 or more"),
        ({"optim": {"mutual_weight": 1.0}}, "this model is one network; set model.members to 2 or more"),
        ({"optim": {"mutual_weight": -1.0}}, r"optim.mutual_weight must be a finite number in \[0, "),
        ({"model": {"norm": "layer"}, "train": {"recalibrate_norm": 100}}, "model.norm=layer has none; set it to 0"),
    ],
)
def test_bad_values_get_one_line_errors(raw, message):
    with pytest.raises(UserError, match=message) as info:
        from_dict(raw)
    assert "\n" not in str(info.value)


def test_bad_preset_name_and_bad_toml(tmp_path):
    with pytest.raises(UserError, match="no preset named 'nope'.*seed"):
        load("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load(str(bad))


def test_parse_override_syntax():
    assert parse_override("model.widths=[1,2]") == (("model", "widths"), [1, 2])
    assert parse_override("train.device=cuda") == (("train", "device"), "cuda")
    with pytest.raises(UserError, match="section.key=value"):
        parse_override("epochs=3")


def test_round_trip_through_dict():
    cfg = load("seed", ["model.widths=[8]"])
    assert from_dict(cfg.to_dict()) == cfg
