"""Which network a config asks for: the MLP family (model.py), or the comparator CNN (cnn.py)."""

from torch import nn

from cifar_mlp.config import ModelConfig


def build(cfg: ModelConfig) -> nn.Module:
    if cfg.architecture == "cnn":
        from cifar_mlp.cnn import CNN

        return CNN(cfg)
    from cifar_mlp.model import build_model

    return build_model(cfg)
