"""Training configuration: the defaults (here, and only here), YAML recipes and key=value overrides.

A recipe is a YAML file of `key: value` pairs that override these defaults; the ones shipped with
edgecls live in `edgecls/recipes/`. Every key can also be set on the command line as `key=value`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgecls.errors import UserError
from edgecls.redact import redact

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_DATA = "digits"
# The LR-search storage URL when lr_search_storage is not given (kept off command lines).
STORAGE_ENV = "EDGECLS_LR_SEARCH_STORAGE"

LR_SEARCH_METHODS = ("auto", "tpe", "range", "grid")
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "nadam", "rmsprop", "adadelta")


@dataclass
class Config:
    recipe: str | None = None  # the recipe the run started from (recorded, for `edgecls compare`)
    # data
    data: str | None = None
    data_root: str | None = None
    download: bool = False
    val_fraction: float = 0.2
    input_size: int = 224
    grayscale: bool = False
    augment: str = "basic"
    hflip: bool = True
    bbox_crop: bool = True  # crop to the boxes of list rows path,label,x0,y0,x1,y1 (001)
    crop_scale: list = dataclasses.field(default_factory=lambda: [0.08, 1.0])  # augment=crop
    hsb_jitter: float = 0.0  # hue, saturation, brightness jitter strength (004: 0.4); 0: off
    pca_lighting: float = 0.0  # std of AlexNet's PCA lighting noise (004: 0.1); 0: off
    random_erasing: float = 0.0  # share of training images with a random box erased (001, 003)
    normalize: str = "model"  # the model's mean/std (ImageNet's); `train`: the training set's (001)
    balance: str = "auto"  # sampler, weights or none; auto: sampler above a 1:10 class imbalance
    workers: int = 2
    # where decoded images live: memory, a memory-mapped file in cache_dir (disk), or auto (disk
    # when they would not fit comfortably in the free memory); folders and list files only
    cache: str = "auto"
    cache_dir: str | None = None  # default: $EDGECLS_CACHE_DIR or ~/.cache/edgecls/images
    # model
    model: str = "mobilenetv3_large_100"
    pretrained: bool = False
    weights: str | None = None
    dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth rate, for timm models that have it
    drop_block: float = 0.0  # DropBlock rate (paper 003), for timm's ResNets
    anti_alias: str = "none"  # anti-aliased downsampling: blur (BlurPool) or avg, in timm models
    # zero-initialise the last batch norm of each residual block (paper 004); null: as the
    # architecture does (timm's ResNets and edgecls's CIFAR ResNets do)
    zero_gamma: bool | None = None
    head: str = "linear"
    head_width: int | None = None  # GhostNet / MobileNetV3 last-layer width (001: 320); null: 1280
    am_scale: float | None = None
    am_margin: float = 0.35
    mutual: bool = False
    # optimisation (paper 000, section 4.3); lr is a number or a search method
    batch_size: int = 64
    lr: float | str = 0.01
    lr_batch_scaling: bool = False
    momentum: float = 0.9
    weight_decay: float = 5e-4
    no_bias_decay: bool = False
    bias_lr_factor: float = 2.0
    freeze_bn: bool = False  # batch norms keep their (pretrained) statistics while training
    # the classifier first fitted on the frozen pretrained features by logistic regression, then
    # everything fine-tunes (LP-FT, Kumar et al. 2022): for a few hundred images
    linear_probe: bool = False
    sync_bn: bool = False  # several processes on GPUs: batch statistics over the global batch
    sam: bool = False
    sam_rho: float = 0.05
    sam_adaptive: bool = False
    amp: bool = False
    optimizer: str = "sgd"  # SGD with momentum; or nesterov, adam, adamw, nadam, rmsprop, adadelta
    max_epochs: int = 200
    schedule: str = "plateau_v2"
    warmup_epochs: int = 5
    lr_factor: float = 0.1
    patience: int = 5
    min_lr_ratio: float = 1 / 200
    forced_decay_at: float = 0.75
    lr_gamma: float = 0.1  # step, multistep: per drop; exp: per epoch
    lr_step_epochs: int = 30  # step: epochs between drops
    lr_milestones: list | None = None  # multistep: the epochs where the LR drops
    lr_power: float = 2.0  # poly: (1 - progress) ** power
    early_stopping: str = "none"  # or val_loss, val_top1: stop when it stops improving
    early_stopping_patience: int = 10
    # tricks (papers 001-004)
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix; 0: off (both on: one or the other)
    mixup_mode: str = "flip"  # the partner: the batch reversed (timm), shuffle, two_batches (003)
    mix_prob: float = 1.0  # share of batches mixed
    mix_off_first: int = 0  # epochs without mixing at the start
    mix_off_last: int = 0  # and at the end (of max_epochs)
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0: off
    stitch_mixup: str = "none"  # or horizontal, vertical: two images cut and joined (paper 002)
    stitch_alpha: float = 0.2  # Beta(alpha, alpha) of the cut's position
    teacher: str | None = None  # knowledge distillation from a run, checkpoint or timm model
    teacher_weights: str | None = None  # a timm teacher's state dict for these classes
    kd_cache: bool = False  # the teacher runs once per image (augmentation and mixing off)
    kd_temperature: float = 1.0  # paper 002 uses 20, paper 003 uses 1
    kd_alpha: float = 0.5  # weight of the teacher's soft targets; 1 - kd_alpha on the labels
    max_rollbacks: int = 3  # divergence: back to the last good checkpoint at lr * lr_factor
    # initial-LR search (lr=tpe|grid|range|auto)
    lr_search_trials: int = 15
    lr_search_epochs: int = 6
    lr_search_range: list | None = None
    lr_search_step: float = 0.001
    lr_search_storage: str | None = None
    # run
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True
    eval_batch_size: int = 256
    export: str | None = None  # e.g. "onnx,openvino": export best.pt (FP32) after training
    tensorboard: bool = False  # event files in RUN/tensorboard
    mlflow: bool | str = False  # true: the local store ./mlruns; or a tracking URI
    # planning (edgecls train DATA without a recipe): the whole run's wall-clock budget, e.g. 5m
    time_budget: str | float | None = None
    max_latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Range:
    """A number from `low` to `high`, both included unless `open_low`/`open_high` exclude them."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False

    def allows(self, value: float) -> bool:
        above = self.low < value if self.open_low else self.low <= value
        below = value < self.high if self.open_high else value <= self.high
        return above and below  # False for NaN too

    def check(self, key: str, value: Any) -> None:
        if _is_number(value) and not self.allows(value):
            raise UserError(f"config key '{key}' must be {self.describe(key)}, got {value!r}")

    def describe(self, key: str) -> str:
        low, high = "<" if self.open_low else "<=", "<" if self.open_high else "<="
        return f"{self.low} {low} {key} {high} {self.high}"


@dataclass(frozen=True)
class OneOf:
    """One of a few names."""

    choices: tuple[str, ...]

    def check(self, key: str, value: Any) -> None:
        if isinstance(value, str) and value not in self.choices:
            raise UserError(
                f"config key '{key}' must be one of {', '.join(self.choices)}, got {value!r}"
            )


@dataclass(frozen=True)
class SomeOf:
    """A comma-separated list of names, possibly empty."""

    choices: tuple[str, ...]

    def check(self, key: str, value: Any) -> None:
        if isinstance(value, str) and set(value.split(",")) - {"", *self.choices}:
            raise UserError(
                f"config key '{key}' takes a comma-separated list of "
                f"{' and/or '.join(self.choices)}, got {value!r}"
            )


@dataclass(frozen=True)
class Interval:
    """[low, high] with low < high, both within `bounds`."""

    bounds: Range

    def check(self, key: str, value: Any) -> None:
        if value is None:
            return
        numbers = len(value) == 2 and all(_is_number(v) and self.bounds.allows(v) for v in value)
        if not numbers or value[0] >= value[1]:
            raise UserError(
                f"config key '{key}' must be [low, high] with low < high and "
                f"{self.bounds.describe('each')}, got {value!r}"
            )


@dataclass(frozen=True)
class CheckedWhenUsed:
    """Anything of the key's type here; `where` says what checks it later, and when."""

    where: str

    def check(self, key: str, value: Any) -> None:
        pass


@dataclass(frozen=True)
class Duration:
    """A positive duration: seconds, or text like 90s, 5m, 2h, 1h30m (null: none)."""

    def check(self, key: str, value: Any) -> None:
        if value is not None:
            parse_duration(value)


Rule = Range | OneOf | SomeOf | Interval | CheckedWhenUsed | Duration
BOOL = CheckedWhenUsed("true or false: the type is the whole rule")

# What each key's value must be, beyond its type (the same for defaults, recipes and overrides).
# A tuple holds one rule per kind of value: lr is a positive number or a search method.
RULES: dict[str, Rule | tuple[Rule, ...]] = {
    "data": CheckedWhenUsed("a folder, list file or built-in name, when the data is loaded"),
    "data_root": CheckedWhenUsed("a folder, when a torchvision dataset is loaded"),
    "download": BOOL,
    "val_fraction": Range(0, 1, open_low=True, open_high=True),
    "input_size": Range(8, 2048),
    "grayscale": BOOL,
    "augment": OneOf(("augmix", "autoaugment", "randaugment", "basic", "light", "crop", "none")),
    "bbox_crop": BOOL,
    "crop_scale": Interval(Range(0, 1, open_low=True)),
    "hflip": BOOL,
    "balance": OneOf(("auto", "sampler", "weights", "none")),
    "hsb_jitter": Range(0, 1),
    "pca_lighting": Range(0, 10),
    "random_erasing": Range(0, 1),
    "normalize": OneOf(("model", "train")),
    "workers": Range(0, 256),
    "cache": OneOf(("auto", "memory", "disk")),
    "cache_dir": CheckedWhenUsed("a folder, created when the disk cache is built"),
    "model": CheckedWhenUsed("a timm model name, when the model is built"),
    "pretrained": BOOL,
    "weights": CheckedWhenUsed("a state dict file, when the model is built"),
    "dropout": Range(0, 1, open_high=True),
    "drop_path": Range(0, 1, open_high=True),
    "zero_gamma": BOOL,
    "drop_block": Range(0, 1, open_high=True),
    "anti_alias": OneOf(("none", "blur", "avg")),
    "head": OneOf(("linear", "am_softmax")),
    "head_width": Range(8, 65536),
    "am_scale": Range(0, 1000, open_low=True),  # null: from the number of classes
    "am_margin": Range(0, 1),
    "mutual": BOOL,
    "batch_size": Range(1, 65536),
    "lr": (Range(0, 10, open_low=True), OneOf(LR_SEARCH_METHODS)),
    "lr_batch_scaling": BOOL,
    "momentum": Range(0, 1, open_high=True),
    "weight_decay": Range(0, 1, open_high=True),
    "no_bias_decay": BOOL,
    "freeze_bn": BOOL,
    "linear_probe": BOOL,
    "sync_bn": BOOL,
    "bias_lr_factor": Range(0, 100, open_low=True),
    "sam": BOOL,
    "sam_rho": Range(0, 10, open_low=True),
    "sam_adaptive": BOOL,
    "amp": BOOL,
    "optimizer": OneOf(OPTIMIZERS),
    "max_epochs": Range(1, 100_000),
    "schedule": OneOf(
        ("plateau_v2", "plateau", "cosine", "constant", "budget_linear")
        + ("step", "multistep", "poly", "exp")
    ),
    "warmup_epochs": Range(0, 100_000),
    "lr_factor": Range(0, 1, open_low=True, open_high=True),
    "patience": Range(0, 100_000),
    "min_lr_ratio": Range(0, 1, open_low=True),
    "forced_decay_at": Range(0, 1, open_low=True),
    "lr_gamma": Range(0, 1, open_low=True),
    "lr_step_epochs": Range(1, 100_000),
    "lr_milestones": CheckedWhenUsed("a list of increasing epochs, when the schedule is built"),
    "lr_power": Range(0, 100, open_low=True),
    "early_stopping": OneOf(("none", "val_loss", "val_top1")),
    "early_stopping_patience": Range(1, 100_000),
    "label_smoothing": Range(0, 1, open_high=True),
    "mixup": Range(0, 100),
    "cutmix": Range(0, 100),
    "mixup_mode": OneOf(("flip", "shuffle", "two_batches")),
    "mix_prob": Range(0, 1),
    "mix_off_first": Range(0, 100_000),
    "mix_off_last": Range(0, 100_000),
    "ema": Range(0, 1, open_high=True),
    "stitch_mixup": OneOf(("none", "horizontal", "vertical")),
    "stitch_alpha": Range(0, 100, open_low=True),
    "teacher": CheckedWhenUsed("a run folder, checkpoint or timm model, when training starts"),
    "teacher_weights": CheckedWhenUsed("a state dict file, when training starts"),
    "kd_cache": BOOL,
    "kd_temperature": Range(0, 1000, open_low=True),
    "kd_alpha": Range(0, 1),
    "lr_search_trials": Range(1, 10_000),
    "lr_search_epochs": Range(1, 10_000),
    "lr_search_range": Interval(Range(0, 10, open_low=True)),
    "lr_search_step": Range(0, 1, open_low=True),
    "lr_search_storage": CheckedWhenUsed("an Optuna storage URL, when the LR search starts"),
    "seed": Range(0, 2**32 - 1),  # what numpy and scikit-learn accept
    "device": OneOf(("auto", "cpu", "cuda")),
    "channels_last": BOOL,
    "eval_batch_size": Range(1, 65536),
    "export": SomeOf(("onnx", "openvino", "torchscript", "tflite", "ncnn", "coreml", "timm")),
    "max_rollbacks": Range(0, 100),
    "recipe": CheckedWhenUsed("the recipe's name, recorded when a run starts"),
    "tensorboard": BOOL,
    "mlflow": CheckedWhenUsed("true, false or a tracking URI, when training starts"),
    "time_budget": Duration(),
    "max_latency_ms": Range(0, 1e6, open_low=True),
}


_FIELD_TYPES = typing.get_type_hints(Config)


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _allowed_types(arg))
    return (typing.get_origin(annotation) or annotation,)


def _check_value(key: str, value: Any) -> Any:
    """Return the value coerced to the key's type, or raise a UserError naming the problem."""
    if key not in _FIELD_TYPES:
        close = difflib.get_close_matches(key, _FIELD_TYPES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown config key '{key}'{hint}")
    allowed = _allowed_types(_FIELD_TYPES[key])
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if str in allowed and float not in allowed and isinstance(value, (int, float)):
        if not (isinstance(value, bool) and bool in allowed):
            value = str(value)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise UserError(f"config key '{key}' expects {names}, got {value!r}")
    return value


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that 1e-3 is a number (YAML 1.2), not a string (YAML 1.1)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Read a shipped recipe by name, or a user's YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(
                f"unknown recipe '{name_or_path}'; shipped recipes: {', '.join(recipe_names())}"
            )
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        content = yaml.load(path.read_text(), Loader=_YamlLoader) or {}
    except yaml.YAMLError as error:
        raise UserError(
            f"recipe {path} is not valid YAML: {' '.join(str(error).split())}"
        ) from None
    if not isinstance(content, dict):
        raise UserError(f"recipe {path} must be a mapping of key: value")
    return content


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ['lr=0.01', 'sam=false'] into a dict, values typed by YAML rules."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"expected key=value, got '{pair}'")
        try:
            overrides[key.strip()] = yaml.load(raw, Loader=_YamlLoader) if raw.strip() else None
        except yaml.YAMLError:
            overrides[key.strip()] = raw
    return overrides


def build_config(*layers: dict[str, Any]) -> Config:
    """Defaults, then each layer (recipe, overrides, command-line options) in order."""
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            values[key] = _check_value(key, value)
    config = Config(**values)
    for key, rules in RULES.items():
        for rule in rules if isinstance(rules, tuple) else (rules,):
            rule.check(key, getattr(config, key))
    from edgecls.device import select_device  # torch loads slowly: only when needed

    select_device(config.device)  # a device this machine lacks is refused before any work
    return config


@dataclass(frozen=True)
class KeyDoc:
    """One config key as the reference pages and `--help` show it."""

    name: str
    type: str
    default: Any
    allowed: str
    help: str


def describe_keys() -> list[KeyDoc]:
    """Every config key, in declaration order: what the configuration reference is made of."""
    docs = []
    for item in dataclasses.fields(Config):
        default = item.default_factory() if item.default is dataclasses.MISSING else item.default
        rules = RULES[item.name]
        allowed = "; ".join(
            _describe_rule(item.name, r) for r in (rules if isinstance(rules, tuple) else (rules,))
        )
        names = " or ".join(
            "null" if t is type(None) else t.__name__
            for t in _allowed_types(_FIELD_TYPES[item.name])
        )
        docs.append(KeyDoc(item.name, names, default, allowed, item.metadata.get("help", "")))
    return docs


def _describe_rule(key: str, rule: Rule) -> str:
    if isinstance(rule, Range):
        return rule.describe(key)
    if isinstance(rule, (OneOf, SomeOf)):
        return ", ".join(rule.choices)
    if isinstance(rule, Interval):
        return f"[low, high], {rule.bounds.describe('each')}"
    if isinstance(rule, CheckedWhenUsed):
        return rule.where
    return "a duration: 90s, 5m, 2h, 1h30m"


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a saved config (checkpoint, run folder), ignoring keys this version dropped."""
    known = {k: v for k, v in values.items() if k in _FIELD_TYPES}
    return Config(**known)


# Settings a resumed run may change: they alter the rest of the run, not what was trained so far.
RESUME_KEYS = (
    "lr",
    "max_epochs",
    "patience",
    "max_rollbacks",
    "export",
    "eval_batch_size",
    "workers",
    "cache",
    "cache_dir",
    "lr_search_storage",
)


def resume_config(
    saved: dict[str, Any], overrides: dict[str, Any]
) -> tuple[Config, dict[str, Any]]:
    """The saved config of a run with the user's safe overrides; returns it and what changed."""
    unsafe = sorted(set(overrides) - set(RESUME_KEYS))
    if unsafe:
        raise UserError(
            f"cannot change {', '.join(unsafe)} when resuming (it would no longer be the same "
            f"run); these can change: {', '.join(RESUME_KEYS)}"
        )
    if isinstance(overrides.get("lr"), str):
        raise UserError("a resumed run takes a number for lr, not a search method")
    saved_config = build_config(saved)
    config = build_config(saved, overrides)
    changed = {
        key: value for key, value in overrides.items() if getattr(saved_config, key) != value
    }
    return config, redact(changed)


def parse_duration(text: str | float | int) -> float:
    """'90s', '5m', '2h', '1h30m' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        units = {"s": 1, "m": 60, "h": 3600}
        seconds, number = 0.0, ""
        for char in str(text).strip().lower():
            if char.isdigit() or char == ".":
                number += char
            elif char in units and number:
                seconds += float(number) * units[char]
                number = ""
            else:
                raise UserError(f"time_budget must look like 90s, 5m, 2h or 1h30m, got {text!r}")
        if number:
            seconds += float(number)
    if seconds <= 0:
        raise UserError(f"time_budget must be positive, got {text!r}")
    return seconds
