"""Unsupervised pretraining of each network's first hidden layer with a zero-bias autoencoder (Memisevic, Konda and
Krueger 2014), as Lin, Memisevic and Konda 2015 pretrained the fully connected networks of their 70% on
permutation-invariant CIFAR-10 (model.pretrain_epochs). The autoencoder learns from the train split's images
alone, before training starts; training then fine-tunes every layer as usual."""

import torch
from torch import nn

LEARNING_RATE = 1e-2  # Adam; at 1e-3 the autoencoder had learned little after 10 epochs (a screen on best-noaug)
BATCH_SIZE = 256
INITIAL_STD = 0.01  # small, so few codes pass the threshold at first (a screen on best-noaug with a unit-variance
# input to each unit at the start, std 1 / sqrt(features), ended lower)
VARIANCE_FLOOR = 1e-2  # each input feature is standardised for the autoencoder, as it learns from whitened data


def zero_bias_autoencoder(x: torch.Tensor, hidden: int, epochs: int, threshold: float,
                          generator: torch.Generator) -> torch.Tensor:
    """Encoder weights (hidden x features) learnt from x (N x features). No biases: a unit's code is its input
    a = w.x where a exceeds the threshold and 0 elsewhere (the thresholded rectifier), and the reconstruction is
    W^T code (tied weights), trained on the squared error with Adam."""
    weight = (torch.randn(hidden, x.shape[1], generator=generator) * INITIAL_STD).to(x.device).requires_grad_()
    optimizer = torch.optim.Adam([weight], lr=LEARNING_RATE)
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).to(x.device).split(BATCH_SIZE):
            batch = x[index]
            pre = batch @ weight.T
            loss = reconstruction_error(batch, (pre * (pre > threshold)) @ weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return weight.detach()


def reconstruction_error(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Squared error summed over features, averaged over examples."""
    return (reconstruction - x).square().sum(1).mean()


@torch.no_grad()
def pretrain_first_layer(linear: nn.Linear, inputs: torch.Tensor, epochs: int, threshold: float,
                         generator: torch.Generator) -> None:
    """Set linear's weights to a zero-bias autoencoder's, learnt on inputs standardised feature by feature and
    mapped back to act on the inputs as they are; their rows are scaled to the mean norm of linear's own
    initial weights, so the optimiser's steps have the size they would have had, and its biases make the
    pre-activation zero at the inputs' mean."""
    mean, std = inputs.mean(0), (inputs.var(0) + VARIANCE_FLOOR).sqrt()
    with torch.enable_grad():
        weight = zero_bias_autoencoder((inputs - mean) / std, linear.out_features, epochs, threshold, generator) / std
    weight *= linear.weight.norm(dim=1).mean() / weight.norm(dim=1).mean()
    linear.weight.copy_(weight)
    linear.bias.copy_(-weight @ mean)


@torch.no_grad()
def pretrain(model: nn.Module, train_images: torch.Tensor, epochs: int, threshold: float, seed: int) -> None:
    """Pretrain the first hidden layer of the MLP, or of each ensemble member (each from its own random start),
    on the train images as that layer sees them (after any fixed projection), in float32."""
    members = list(model) if isinstance(model, nn.ModuleList) else [model]
    inputs = members[0].map_inputs(train_images).float()
    for i, member in enumerate(members):
        generator = torch.Generator().manual_seed(seed * 1000 + i)
        pretrain_first_layer(member.blocks[0][0], inputs, epochs, threshold, generator)
