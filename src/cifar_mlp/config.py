"""The run configuration: dataclasses, TOML presets, command-line overrides, and all validation in one place."""

import copy
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from cifar_mlp import UserError

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    val_per_class: int = 500
    split_seed: int = 0
    augment: list[str] = field(default_factory=list)  # any of "flip", "crop", "affine", "colour"; on the device
    translate: int = 4  # "crop": the largest shift in pixels, each way (a crop of the image padded by this much)
    rotate: float = 10.0  # "affine": the largest rotation in degrees, each way
    zoom: float = 0.1  # "affine": the largest change of scale, each way (0.1: zoomed by a factor in [0.9, 1.1])
    colour: float = 0.2  # "colour": the largest change of brightness, contrast and saturation, each way
    mix: str = "none"  # none | mixup | cutmix: blend pairs of training images and their labels, per batch
    mix_alpha: float = 1.0  # the mixing ratio is drawn from Beta(mix_alpha, mix_alpha)
    clean_epochs: int = 0  # the last this many epochs train on the images as they are: no augment, no mix


@dataclass
class ModelConfig:
    architecture: str = "mlp"  # mlp | cnn: the comparator CNN (cnn.py), which only the seed's CNN claims use
    widths: list[int] = field(default_factory=lambda: [512, 256, 128])  # cnn: the channels of its three blocks
    dropout: float = 0.2
    input_dropout: float = 0.0  # dropout on the input features (after any whitening or projection); 0: off
    norm: str = "batch"  # batch | layer | none
    activation: str = "relu"  # relu | gelu
    order: str = "act-norm"  # act-norm: Linear->Act->Norm->Dropout (the seed's); norm-act: Linear->Norm->Act->Dropout
    residual: bool = False  # add the block input to its output where the widths match
    bottleneck: int = 0  # a linear layer (no activation) down to this many features between hidden blocks; 0: off
    image_norm: bool = False  # standardise each image over its 3,072 values (global contrast normalisation), first
    whitening: str = "none"  # none | pca | zca | project: a fixed linear map fitted on the train split, the first
    # layer; pca/zca whiten, project keeps the top principal components unwhitened (model.fit_whitening)
    whitening_dims: int = 3072  # principal components kept by pca and project
    whitening_eps: float = 0.01  # added to each eigenvalue before the inverse square root
    pretrain_epochs: int = 0  # epochs of a zero-bias autoencoder pretraining each first hidden layer (pretrain.py)
    pretrain_threshold: float = 1.0  # a unit codes its input w.x where it exceeds this (x standardised per feature)
    members: int = 1  # an ensemble: this many MLPs trained independently side by side, their probabilities averaged


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | sgd (Nesterov momentum) | muon (hidden weight matrices; AdamW for the rest)
    # | lion (sign of momentum: lr 3-10x smaller than AdamW's, weight decay as many times larger)
    lr: float = 1e-6
    momentum: float = 0.9  # sgd and muon
    weight_decay: float = 0.01
    decay_biases_and_norms: bool = True  # false: weight decay on weight matrices (and conv kernels) only
    schedule: str = "none"  # none | cosine | onecycle
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    ema_decay: float = 0.0  # per-step decay of a moving average of the weights, evaluated and saved; 0: off
    sam_rho: float = 0.0  # sharpness-aware minimisation: radius of the weight perturbation; 0: plain steps
    distill_weight: float = 0.5  # with train.teacher: the teacher's share of each target, the label's the rest
    distill_temperature: float = 1.0  # with train.teacher: divides the teacher's logits (above 1 softens them)
    mutual_weight: float = 0.0  # an ensemble's members also learn from each other's predictions (train.mutual_kl)


@dataclass
class TrainConfig:
    epochs: int = 80
    batch_size: int = 2024
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = False  # bf16 autocast (training, validation) where the device has native bf16, else float32
    tensorboard: bool = False  # also log to TensorBoard event files under RUN/tensorboard
    grad_norms: bool = False  # add each weight layer's gradient norm (mean over the epoch's steps) to history.csv
    teacher: str = ""  # distillation: a run directory (or checkpoint) whose predictions the targets blend in
    recalibrate_norm: int = 0  # BatchNorm statistics recomputed from this many train images, dropout off, each
    # epoch before validation (train.recalibrate_batch_norm); 0: off, the statistics training kept
    dropout_off_epochs: int = 0  # the last this many epochs train with every dropout off, as evaluation runs


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.mix": {"none", "mixup", "cutmix"},
    "model.architecture": {"mlp", "cnn"},
    "model.norm": {"batch", "layer", "none"},
    "model.activation": {"relu", "gelu"},
    "model.order": {"act-norm", "norm-act"},
    "model.whitening": {"none", "pca", "zca", "project"},
    "optim.optimizer": {"adamw", "sgd", "muon", "lion"},
    "optim.schedule": {"none", "cosine", "onecycle"},
    "train.device": {"auto", "cpu", "cuda"},
}
AUGMENTATIONS = {"flip", "crop", "affine", "colour"}


def _coerce(key: str, value, annotation):
    """Check one value against its annotated type; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise UserError(f"config: {key} must be a list, got {value!r}; e.g. --set {key}=[...]")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise UserError(f"config: {key} = {value} is too large for a float") from None
    if (annotation is int and isinstance(value, bool)) or not isinstance(value, annotation):
        raise UserError(f"config: {key} must be of type {annotation.__name__}, got {value!r}")
    return value


def from_dict(raw: dict) -> Config:
    """Build a Config from nested dicts, rejecting unknown sections and keys and checking every value."""
    sections = {}
    for f in dataclasses.fields(Config):
        section_raw = raw.get(f.name, {})
        if not isinstance(section_raw, dict):
            raise UserError(f"config: [{f.name}] must be a table of keys")
        hints = typing.get_type_hints(f.default_factory)
        known = {sf.name for sf in dataclasses.fields(f.default_factory)}
        for key in section_raw:
            if key not in known:
                raise UserError(f"config: unknown key {f.name}.{key}; known keys: {', '.join(sorted(known))}")
        values = {k: _coerce(f"{f.name}.{k}", v, hints[k]) for k, v in section_raw.items()}
        sections[f.name] = f.default_factory(**values)
    for name in raw:
        if name not in sections:
            raise UserError(f"config: unknown section [{name}]; known: {', '.join(sections)}")
    config = Config(**sections)
    validate(config)
    return config


# (low, high, low included, high included) of every numeric key; a list's bounds apply to each item.
SEED_MAX = 2**32 - 1
RANGES = {
    "data.val_per_class": (1, 10**6, True, True),
    "data.split_seed": (0, SEED_MAX, True, True),
    "data.mix_alpha": (0, 1e6, False, True),
    "data.translate": (1, 16, True, True),
    "data.rotate": (0, 180, True, True),
    "data.zoom": (0, 0.5, True, True),
    "data.colour": (0, 1, True, True),
    "data.clean_epochs": (0, 10**6, True, True),
    "model.widths": (1, 2**31 - 1, True, True),
    "model.dropout": (0, 1, True, False),
    "model.input_dropout": (0, 1, True, False),
    "model.whitening_dims": (1, 3072, True, True),
    "model.whitening_eps": (0, 1e6, False, True),
    "model.members": (1, 1000, True, True),
    "model.bottleneck": (0, 2**31 - 1, True, True),
    "model.pretrain_epochs": (0, 10**6, True, True),
    "model.pretrain_threshold": (0, 1e6, True, True),
    "optim.lr": (0, 1e3, False, True),
    "optim.momentum": (0, 1, True, False),
    "optim.weight_decay": (0, 1e3, True, True),
    "optim.warmup_epochs": (0, 10**6, True, True),
    "optim.label_smoothing": (0, 1, True, False),
    "optim.grad_clip": (0, 1e12, True, True),
    "optim.ema_decay": (0, 1, True, False),
    "optim.sam_rho": (0, 1e3, True, True),
    "optim.distill_weight": (0, 1, True, True),
    "optim.distill_temperature": (0, 1e3, False, True),
    "optim.mutual_weight": (0, 1e3, True, True),
    "train.epochs": (1, 10**6, True, True),
    "train.batch_size": (1, 2**31 - 1, True, True),
    "train.seed": (0, SEED_MAX, True, True),
    "train.recalibrate_norm": (0, 10**7, True, True),
    "train.dropout_off_epochs": (0, 10**6, True, True),
}


def check_range(key: str, value, low, high, low_in: bool, high_in: bool) -> None:
    """A one-line error for a value that is not finite or lies outside its range."""
    inside = math.isfinite(value) and (low <= value if low_in else low < value) and (
        value <= high if high_in else value < high)
    if not inside:
        interval = f"{'[' if low_in else '('}{low:,}, {high:,}{']' if high_in else ')'}"
        raise UserError(f"config: {key} must be a finite number in {interval}, got {value!r}")


def validate(c: Config) -> None:
    """Value checks that types alone do not catch: every numeric value finite and in its range, then the
    relations between keys and the named choices."""
    for key, bounds in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(c, section), name)
        for item in value if isinstance(value, list) else [value]:
            check_range(key, item, *bounds)
    if not c.model.widths:
        raise UserError("config: model.widths must be a non-empty list of positive ints, e.g. [512, 256, 128]")
    if c.optim.warmup_epochs > c.train.epochs:
        raise UserError(f"config: optim.warmup_epochs ({c.optim.warmup_epochs}) exceeds train.epochs")
    for key, tail, otherwise in (("data.clean_epochs", c.data.clean_epochs, "augment every epoch"),
                                 ("train.dropout_off_epochs", c.train.dropout_off_epochs, "keep dropout every epoch")):
        if tail > c.train.epochs:
            raise UserError(f"config: {key} ({tail}) exceeds train.epochs ({c.train.epochs}); set it to at most "
                            f"train.epochs, or 0 to {otherwise}")
    if c.model.architecture == "cnn":
        check_comparator(c.model)
        if c.optim.optimizer == "muon":
            raise UserError("config: optim.optimizer=muon orthogonalises weight matrices, and the cnn comparator's "
                            "are convolution filters; use adamw or sgd with model.architecture=cnn")
    if c.train.batch_size == 1 and (c.model.norm == "batch" or c.model.architecture == "cnn"):
        raise UserError("config: train.batch_size=1 cannot train BatchNorm, which needs at least 2 images per batch; "
                        "use a batch size of 2 or more, or --set model.norm=layer")
    if c.train.recalibrate_norm == 1:
        raise UserError("config: train.recalibrate_norm=1 cannot compute BatchNorm statistics, which need at least "
                        "2 images; use 2 or more (e.g. 5000), or 0 to turn it off")
    if c.train.recalibrate_norm and c.model.architecture == "mlp" and c.model.norm != "batch":
        raise UserError(f"config: train.recalibrate_norm recomputes BatchNorm statistics, and model.norm="
                        f"{c.model.norm} has none; set it to 0, or use model.norm=batch")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(c, section), name)
        if value not in allowed:
            raise UserError(f"config: {key} must be one of {', '.join(sorted(allowed))}, got {value!r}")
    if c.optim.mutual_weight and c.model.members < 2:
        raise UserError(f"config: optim.mutual_weight={c.optim.mutual_weight} makes an ensemble's members learn from "
                        "each other, and this model is one network; set model.members to 2 or more, or "
                        "optim.mutual_weight to 0")
    if c.train.teacher and (c.data.augment or c.data.mix != "none"):
        raise UserError("config: train.teacher distils the teacher's predictions for the train images as they are; "
                        "with a teacher, set data.augment = [] and data.mix = \"none\"")
    unknown = set(c.data.augment) - AUGMENTATIONS
    if unknown:
        raise UserError(f"config: data.augment accepts {sorted(AUGMENTATIONS)}, got {sorted(unknown)}")


def check_comparator(m: ModelConfig) -> None:
    """The CNN has its own fixed first layer and block design: the MLP's options do not apply to it."""
    if len(m.widths) != 3:
        raise UserError(f"config: model.architecture=cnn takes three model.widths (its blocks' channels), got "
                        f"{m.widths}")
    mlp_only = {k: v for k, v in dataclasses.asdict(m).items()
                if k not in ("architecture", "widths", "dropout") and v != getattr(ModelConfig(), k)}
    if mlp_only:
        key = sorted(mlp_only)[0]
        raise UserError(f"config: model.{key} is an MLP option; the cnn comparator does not use it (leave it at "
                        f"{getattr(ModelConfig(), key)!r})")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_toml(name_or_path: str) -> dict:
    """A preset name (see configs/) or a path to a TOML file."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise UserError(f"no preset named {name_or_path!r}; choose one of {', '.join(preset_names())} "
                            "or give a path to a .toml file")
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} not found; give a preset name or an existing .toml path") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def parse_override(assignment: str) -> tuple[tuple[str, str], object]:
    """`section.key=value`, the value in TOML syntax; a bare word is taken as a string."""
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise UserError(f"--set expects section.key=value (e.g. model.widths=[1024,512]), got {assignment!r}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return tuple(parts), value


def load(name_or_path: str, overrides: list[str] = ()) -> Config:
    return apply_overrides(read_toml(name_or_path), overrides)


def apply_overrides(raw: dict, overrides: list[str] = ()) -> Config:
    """Raw config tables (from a preset, a file, or a run's config.json) with `section.key=value` applied."""
    return with_values(raw, dict(parse_override(assignment) for assignment in overrides))


def with_values(raw: dict, values: dict) -> Config:
    """Raw config tables with values set by key ("section.key" strings, or (section, key) pairs), validated."""
    raw = copy.deepcopy(raw)
    for name, value in values.items():
        parts = name.split(".", 1) if isinstance(name, str) else name
        if len(parts) != 2:
            raise UserError(f"config: {name!r} is not a key of the form section.key, e.g. optim.lr")
        section, key = parts
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"config: [{section}] must be a table of keys")
        raw[section][key] = value
    return from_dict(raw)
