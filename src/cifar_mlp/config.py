"""The run configuration: dataclasses, TOML presets, command-line overrides, and all validation in one place."""

import dataclasses
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
    augment: list[str] = field(default_factory=list)  # any of "flip", "crop"; applied on the device per batch
    mix: str = "none"  # none | mixup | cutmix: blend pairs of training images and their labels, per batch
    mix_alpha: float = 1.0  # the mixing ratio is drawn from Beta(mix_alpha, mix_alpha)


@dataclass
class ModelConfig:
    widths: list[int] = field(default_factory=lambda: [512, 256, 128])
    dropout: float = 0.2
    input_dropout: float = 0.0  # dropout on the input features (after any whitening or projection); 0: off
    norm: str = "batch"  # batch | layer | none
    activation: str = "relu"  # relu | gelu
    order: str = "act-norm"  # act-norm: Linear->Act->Norm->Dropout (the seed's); norm-act: Linear->Norm->Act->Dropout
    residual: bool = False  # add the block input to its output where the widths match
    whitening: str = "none"  # none | pca | zca | project: a fixed linear map fitted on the train split, the first
    # layer; pca/zca whiten, project keeps the top principal components unwhitened (model.fit_whitening)
    whitening_dims: int = 3072  # principal components kept by pca and project
    whitening_eps: float = 0.01  # added to each eigenvalue before the inverse square root
    members: int = 1  # an ensemble: this many MLPs trained independently side by side, their probabilities averaged


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.01
    schedule: str = "none"  # none | cosine | onecycle
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    ema_decay: float = 0.0  # per-step decay of a moving average of the weights, evaluated and saved; 0: off
    sam_rho: float = 0.0  # sharpness-aware minimisation: radius of the weight perturbation; 0: plain steps


@dataclass
class TrainConfig:
    epochs: int = 80
    batch_size: int = 2024
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = False  # bf16 autocast of the forward and backward matmuls (CPUs with AVX512-BF16 or AMX, GPUs)


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
    "model.norm": {"batch", "layer", "none"},
    "model.activation": {"relu", "gelu"},
    "model.order": {"act-norm", "norm-act"},
    "model.whitening": {"none", "pca", "zca", "project"},
    "optim.schedule": {"none", "cosine", "onecycle"},
    "train.device": {"auto", "cpu", "cuda"},
}
AUGMENTATIONS = {"flip", "crop"}


def _coerce(key: str, value, annotation):
    """Check one value against its annotated type; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise UserError(f"config: {key} must be a list, got {value!r}; e.g. --set {key}=[...]")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
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


def validate(c: Config) -> None:
    """Value checks that types alone do not catch."""
    positive = {
        "train.epochs": c.train.epochs,
        "train.batch_size": c.train.batch_size,
        "optim.lr": c.optim.lr,
        "data.val_per_class": c.data.val_per_class,
        "model.members": c.model.members,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"config: {key} must be positive, got {value}")
    non_negative = {
        "optim.weight_decay": c.optim.weight_decay,
        "optim.warmup_epochs": c.optim.warmup_epochs,
        "optim.grad_clip": c.optim.grad_clip,
        "optim.sam_rho": c.optim.sam_rho,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise UserError(f"config: {key} must be >= 0, got {value}")
    for key, value in {"model.dropout": c.model.dropout, "model.input_dropout": c.model.input_dropout}.items():
        if not 0 <= value < 1:
            raise UserError(f"config: {key} must be in [0, 1), got {value}")
    if not 0 <= c.optim.ema_decay < 1:
        raise UserError(f"config: optim.ema_decay must be in [0, 1), got {c.optim.ema_decay}")
    if c.data.mix_alpha <= 0:
        raise UserError(f"config: data.mix_alpha must be positive, got {c.data.mix_alpha}")
    if not 0 <= c.optim.label_smoothing < 1:
        raise UserError(f"config: optim.label_smoothing must be in [0, 1), got {c.optim.label_smoothing}")
    if not c.model.widths or any(w <= 0 for w in c.model.widths):
        raise UserError(f"config: model.widths must be a non-empty list of positive ints, got {c.model.widths}")
    if not 0 < c.model.whitening_dims <= 3072:
        raise UserError(f"config: model.whitening_dims must be in 1..3072, got {c.model.whitening_dims}")
    if c.model.whitening_eps <= 0:
        raise UserError(f"config: model.whitening_eps must be positive, got {c.model.whitening_eps}")
    if c.optim.warmup_epochs > c.train.epochs:
        raise UserError(f"config: optim.warmup_epochs ({c.optim.warmup_epochs}) exceeds train.epochs")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(c, section), name)
        if value not in allowed:
            raise UserError(f"config: {key} must be one of {', '.join(sorted(allowed))}, got {value!r}")
    unknown = set(c.data.augment) - AUGMENTATIONS
    if unknown:
        raise UserError(f"config: data.augment accepts {sorted(AUGMENTATIONS)}, got {sorted(unknown)}")


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


def parse_override(assignment: str) -> tuple[list[str], object]:
    """`section.key=value`, the value in TOML syntax; a bare word is taken as a string."""
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise UserError(f"--set expects section.key=value (e.g. model.widths=[1024,512]), got {assignment!r}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return parts, value


def load(name_or_path: str, overrides: list[str] = ()) -> Config:
    return apply_overrides(read_toml(name_or_path), overrides)


def apply_overrides(raw: dict, overrides: list[str] = ()) -> Config:
    """Raw config tables (from a preset, a file, or a run's config.json) with `section.key=value` applied."""
    for assignment in overrides:
        (section, key), value = parse_override(assignment)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"config: [{section}] must be a table of keys")
        raw[section][key] = value
    return from_dict(raw)
