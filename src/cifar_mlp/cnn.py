"""The comparator: a small convolutional network, the only model in this project that is not fully connected.

It is here to measure the seed's claims about convolutional models (that they classify better, and that their
features survive rotations and shifts), never as part of an MLP recipe. It follows the design of Keller
Jordan's airbench: a fixed first layer that whitens 2x2 patches (fitted on the train split, not trained), three
blocks of convolution, max pooling, BatchNorm and GELU, a global max pool and a linear head.
`model.architecture = "cnn"` selects it; `model.widths` gives the three blocks' channels.
"""

import torch
from torch import nn

from cifar_mlp.config import ModelConfig

NUM_CLASSES = 10
PATCH = 2  # the whitening layer's patch size
WHITENING_EPS = 5e-4
HEAD_SCALE = 1 / 9  # airbench's scaled-down logits, which its short schedules train better with


class ConvBlock(nn.Sequential):
    """conv 3x3 -> max pool 2 -> BatchNorm -> GELU -> conv 3x3 -> BatchNorm -> GELU."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__(nn.Conv2d(n_in, n_out, 3, padding="same", bias=False), nn.MaxPool2d(2),
                         nn.BatchNorm2d(n_out), nn.GELU(),
                         nn.Conv2d(n_out, n_out, 3, padding="same", bias=False), nn.BatchNorm2d(n_out), nn.GELU())


class CNN(nn.Module):
    whitened = True  # its first layer is fitted on the train split before training (fit_input_map)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        channels = 2 * 3 * PATCH * PATCH  # each whitened patch direction, positive and negative
        self.register_buffer("whiten_weight", torch.zeros(channels, 3, PATCH, PATCH))
        self.register_buffer("whiten_bias", torch.zeros(channels))
        widths = [channels, *cfg.widths]
        self.blocks = nn.Sequential(*(ConvBlock(a, b) for a, b in zip(widths, widths[1:], strict=False)))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(widths[-1], NUM_CLASSES, bias=False)
        self.to(memory_format=torch.channels_last)  # 1.7x faster convolutions on the CPU (BENCHMARKS.md)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images N x 3 x 32 x 32 -> logits N x 10."""
        x = images.contiguous(memory_format=torch.channels_last)
        x = nn.functional.gelu(nn.functional.conv2d(x, self.whiten_weight, self.whiten_bias))
        x = self.blocks(x).amax((2, 3))
        return self.head(self.dropout(x)) * HEAD_SCALE

    @torch.no_grad()
    def fit_input_map(self, train_images: torch.Tensor) -> None:
        """The whitening filters: the eigenvectors of the covariance of the train split's 2x2 patches, each scaled
        by 1 / sqrt(eigenvalue + eps), with their negatives (so that GELU keeps both signs)."""
        sample = train_images[:: max(1, len(train_images) // 5000)]
        patches = nn.functional.unfold(sample.float(), PATCH).transpose(1, 2).reshape(-1, 3 * PATCH * PATCH)
        mean = patches.mean(0)
        centred = (patches - mean).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / (len(patches) - 1))
        filters = (eigenvectors / (eigenvalues + WHITENING_EPS).sqrt()).T.float()
        weight = torch.cat([filters, -filters])
        self.whiten_weight.copy_(weight.view(-1, 3, PATCH, PATCH))
        self.whiten_bias.copy_(-weight @ mean)
