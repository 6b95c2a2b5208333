import dataclasses
import time

import torch

from cifar_mlp import pretrain, train
from cifar_mlp.config import ModelConfig
from cifar_mlp.model import build_model
from cifar_mlp.rundir import read_history


def low_rank_inputs(n=512, features=32, rank=4, seed=0):
    """Standardised inputs on a 4-dimensional subspace: a linear autoencoder could reconstruct them exactly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, generator=g) @ torch.randn(rank, features, generator=g)
    return (x - x.mean(0)) / x.std(0)


def error(x, weight, threshold):
    pre = x @ weight.T
    return pretrain.reconstruction_error(x, (pre * (pre > threshold)) @ weight).item()


def test_the_autoencoder_learns_to_reconstruct_its_inputs():
    x = low_rank_inputs()
    energy = x.square().sum(1).mean().item()
    start = pretrain.zero_bias_autoencoder(x, 64, 0, 0.0, torch.Generator().manual_seed(0))
    learnt = pretrain.zero_bias_autoencoder(x, 64, 30, 0.0, torch.Generator().manual_seed(0))
    assert error(x, start, 0.0) > 0.99 * energy  # small random weights: the reconstruction is near zero
    assert error(x, learnt, 0.0) < 0.1 * energy
    again = pretrain.zero_bias_autoencoder(x, 64, 30, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(learnt, again)


def test_codes_below_the_threshold_are_zero():
    """With a threshold above every unit's input, no unit codes anything, so nothing is learnt."""
    x = low_rank_inputs()
    start = pretrain.zero_bias_autoencoder(x, 16, 0, 1e6, torch.Generator().manual_seed(0))
    learnt = pretrain.zero_bias_autoencoder(x, 16, 3, 1e6, torch.Generator().manual_seed(0))
    assert torch.equal(start, learnt)


def test_each_members_first_layer_is_pretrained_and_nothing_else():
    cfg = ModelConfig(widths=[48, 24], members=2)
    images = torch.randn(300, 3, 32, 32)
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pretrain.pretrain(model, images, 5, 1.0, seed=3)
    after = model.state_dict()
    first = {f"{i}.blocks.0.0.weight" for i in range(2)} | {f"{i}.blocks.0.0.bias" for i in range(2)}
    assert all(torch.equal(before[k], after[k]) for k in before if k not in first)
    inputs = model[0].map_inputs(images)
    for i in range(2):
        weight, bias = after[f"{i}.blocks.0.0.weight"], after[f"{i}.blocks.0.0.bias"]
        assert not torch.equal(weight, before[f"{i}.blocks.0.0.weight"])
        assert torch.allclose(weight.norm(dim=1).mean(), before[f"{i}.blocks.0.0.weight"].norm(dim=1).mean())
        assert torch.allclose(inputs.mean(0) @ weight.T + bias, torch.zeros(48), atol=1e-5)
    assert not torch.equal(after["0.blocks.0.0.weight"], after["1.blocks.0.0.weight"])

    torch.manual_seed(0)
    same = build_model(cfg)
    pretrain.pretrain(same, images, 5, 1.0, seed=3)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in after.items())


def test_training_pretrains_first_and_counts_it_in_the_first_epoch(tiny_config, synthetic_root, tmp_path,
                                                                  monkeypatch):
    calls = []

    def slow_pretrain(model, images, epochs, threshold, seed):
        calls.append((epochs, threshold, seed, model.training))
        time.sleep(0.5)

    monkeypatch.setattr(pretrain, "pretrain", slow_pretrain)
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, pretrain_epochs=7,
                                                                     pretrain_threshold=0.5))
    train.train(cfg, tmp_path / "run", synthetic_root, allow_download=False, quiet=True)
    assert calls == [(7, 0.5, 0, True)]
    history = read_history(tmp_path / "run")
    assert history[0]["epoch_time_s"] >= 0.5 > max(row["epoch_time_s"] for row in history[1:])
