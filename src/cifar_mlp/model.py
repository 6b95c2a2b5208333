"""The multilayer perceptron: fully connected layers only, outputting logits (softmax is applied at inference).

Training uses cross-entropy on these logits, which is the seed's "softmax + categorical cross-entropy" computed
in one numerically stable step.
"""

import math

import torch
from torch import nn

from cifar_mlp.config import ModelConfig

IN_FEATURES = 3 * 32 * 32
NUM_CLASSES = 10
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def make_norm(kind: str, width: int) -> nn.Module:
    return {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}.get(kind, lambda _: nn.Identity())(width)


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper CPU mask: each 64-bit random word gives four 16-bit uniforms, so the CPU's
    sequential random-number generator makes a quarter as many calls as torch's bernoulli_ (which took 13% of a
    seed-model epoch), and the mask is one tensor of 0 and the scale, multiplied in. The scale (the inverse of the
    keep probability) is rounded to what x's dtype holds exactly, so bf16 keeps the expected activation, and an
    element is kept with probability round(2^16 / scale) / 2^16: within 2^-17 of 1 - p in float32, within 0.4% of
    it in bf16 (exactly as close as float32 for p = 0.2 and 0.5). On CUDA it is torch's own dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.is_cuda:
            return super().forward(x)
        scale = x.new_tensor(1 / (1 - self.p))
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
        uniform16 = words.view(torch.int16)[: x.numel()].view_as(x)  # each of the 2^16 values equally likely
        return x * torch.where(uniform16 < round(65536 / scale.item()) - 32768, scale, x.new_zeros(()))


class Block(nn.Sequential):
    """Linear -> activation -> norm -> dropout (the seed's order), or Linear -> norm -> activation -> dropout."""

    def __init__(self, n_in: int, n_out: int, cfg: ModelConfig):
        act, norm = ACTIVATIONS[cfg.activation](), make_norm(cfg.norm, n_out)
        middle = [act, norm] if cfg.order == "act-norm" else [norm, act]
        super().__init__(nn.Linear(n_in, n_out), *middle, Dropout(cfg.dropout))
        self.residual = cfg.residual and n_in == n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return x + out if self.residual else out


class MLP(nn.Module):
    """Optional fixed whitening (a linear map fitted on the train split, stored as buffers so that every later
    step applies it), optional dropout of input features, hidden blocks, and a final Linear to 10 logits. With
    model.bottleneck, a Linear without activation narrows each hidden block's output before the next block (Lin,
    Memisevic and Konda 2015's linear bottleneck layers: wide nonlinear layers at a fraction of the weights)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        in_features = IN_FEATURES
        self.whitened = cfg.whitening != "none"
        if self.whitened:
            in_features = IN_FEATURES if cfg.whitening == "zca" else cfg.whitening_dims
            self.register_buffer("whiten_weight", torch.zeros(in_features, IN_FEATURES))
            self.register_buffer("whiten_bias", torch.zeros(in_features))
        self.input_dropout = Dropout(cfg.input_dropout) if cfg.input_dropout else None
        layers = []
        for i, width in enumerate(cfg.widths):
            layers.append(Block(in_features, width, cfg))
            in_features = width
            if cfg.bottleneck and i < len(cfg.widths) - 1:
                layers.append(nn.Linear(width, cfg.bottleneck))
                in_features = cfg.bottleneck
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(in_features, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (N x 3 x 32 x 32, or already flat N x 3072) -> logits N x 10."""
        return self.classify(self.map_inputs(images))

    def flat_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """N x 3072, each image standardised with model.image_norm: global contrast normalisation (Goodfellow et al.
        2013, Lin et al. 2015), which removes each image's overall brightness and contrast before the network, at
        training and at inference alike. A small floor on the variance keeps a flat image finite."""
        x = images.flatten(1)
        if not self.cfg.image_norm:
            return x
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        return (x - mean) * (var + 1e-2).rsqrt()

    def map_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The flat images through the fixed first layer, if any: N x the first trained layer's inputs."""
        x = self.flat_inputs(images)
        return nn.functional.linear(x, self.whiten_weight, self.whiten_bias) if self.whitened else x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """map_inputs' output -> logits N x 10."""
        if self.input_dropout is not None:
            x = self.input_dropout(x)
        return self.head(self.blocks(x))

    def set_input_map(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.whiten_weight[:], self.whiten_bias[:] = weight, bias

    def fit_input_map(self, train_images: torch.Tensor) -> None:
        """The fixed first layer (model.whitening), fitted on the train split's images."""
        self.set_input_map(*fit_whitening(self.flat_inputs(train_images), self.cfg))


class Ensemble(nn.ModuleList):
    """model.members MLPs side by side. Training gives each its own loss (train.forward_loss), so they learn
    independently, as separate runs would, differing by their initial weights and dropout masks; the ensemble's
    logits are the log of their mean probabilities, so its softmax is the averaged prediction."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(MLP(cfg) for _ in range(cfg.members))
        self.whitened = self[0].whitened

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        """members x N x 10. The fixed first layer, the same in every member, is applied once for all of them,
        not once per member: behind best's 3072 x 512 projection that is a tenth of each training step."""
        x = self[0].map_inputs(images)
        return torch.stack([member.classify(x) for member in self])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return average_probabilities(self.member_logits(images))

    def fit_input_map(self, train_images: torch.Tensor) -> None:
        """One fixed first layer, fitted once, shared by every member."""
        weight, bias = fit_whitening(self[0].flat_inputs(train_images), self[0].cfg)
        for member in self:
            member.set_input_map(weight, bias)


def average_probabilities(member_logits: torch.Tensor) -> torch.Tensor:
    """Logits (members x N x C) -> N x C logits whose softmax is the members' mean probability."""
    return member_logits.float().log_softmax(-1).logsumexp(0) - math.log(len(member_logits))


def build_model(cfg: ModelConfig) -> MLP | Ensemble:
    return MLP(cfg) if cfg.members == 1 else Ensemble(cfg)


@torch.no_grad()
def fit_whitening(x: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the fixed first layer for flat inputs x (N x 3072), from the eigenvectors of their
    covariance. PCA and ZCA scale each component by 1 / sqrt(eigenvalue + eps) (whitening); ZCA rotates back to
    pixel space, PCA keeps the top whitening_dims. "project" keeps the top whitening_dims at their natural
    relative scale (one factor makes the average variance 1): a low-pass filter that drops the small,
    high-frequency components an MLP would otherwise use to memorise its training images."""
    mean = x.mean(0)
    centred = x - mean
    cov = (centred.T @ centred).double() / (len(x) - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    whiten = (eigenvalues + cfg.whitening_eps).rsqrt()
    if cfg.whitening == "zca":
        weight = (eigenvectors * whiten) @ eigenvectors.T
    else:
        top = slice(-cfg.whitening_dims, None)
        scale = eigenvalues[top].mean().rsqrt() if cfg.whitening == "project" else whiten[top]
        weight = (eigenvectors[:, top] * scale).T.flip(0)
    weight = weight.to(x.dtype)
    return weight, -weight @ mean


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: nn.Module) -> str:
    """One line per layer, for the report and the CLI."""
    return "\n".join(f"{name}: {module}" for name, module in model.named_modules()
                     if name and not list(module.children()))


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Logits for a whole split in eval mode (dropout off, BatchNorm running statistics), batched."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(chunk) for chunk in images.split(batch_size)])
    model.train(was_training)
    return logits.float()

