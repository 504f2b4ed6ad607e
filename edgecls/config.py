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
from edgecls.registry import (
    AUGMENT_POLICIES,
    EXPORT_FORMATS,
    OPTIMIZERS,
    SCHEDULES,
    Registry,
)

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_DATA = "digits"
# The LR-search storage URL when lr_search_storage is not given (kept off command lines).
STORAGE_ENV = "EDGECLS_LR_SEARCH_STORAGE"

LR_SEARCH_METHODS = ("auto", "tpe", "range", "grid")
DEVICES = ("auto", "cpu", "cuda")
AUDIT_CHECKS = ("off", "leaks", "full")


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


def _names(choices: tuple[str, ...] | Registry) -> tuple[str, ...]:
    return choices.names() if isinstance(choices, Registry) else choices


@dataclass(frozen=True)
class OneOf:
    """One of a few names: a fixed tuple, or those of a registry (read when first needed)."""

    source: tuple[str, ...] | Registry

    @property
    def choices(self) -> tuple[str, ...]:
        return _names(self.source)

    def check(self, key: str, value: Any) -> None:
        if isinstance(value, str) and value not in self.choices:
            raise UserError(
                f"config key '{key}' must be one of {', '.join(self.choices)}, got {value!r}"
            )


@dataclass(frozen=True)
class SomeOf:
    """A comma-separated list of names, possibly empty."""

    source: tuple[str, ...] | Registry

    @property
    def choices(self) -> tuple[str, ...]:
        return _names(self.source)

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


def key(default: Any, help: str, *rules: Rule) -> Any:
    """One config key's declaration: its default, one line of help, and what its value must be
    beyond its type (none: the type is the whole rule; two: one per kind of value, as lr is a
    positive number or a search method)."""
    metadata = {"help": help, "rules": rules}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """Every setting of a run, each declared once: default, one line of help, and what its value
    must be beyond its type. Validation, config.yaml, the CLI's help and the configuration
    reference are all read from these declarations. Build one with `build_config`; a built
    config is never changed (derive another with `dataclasses.replace`)."""

    recipe: str | None = key(
        None,
        "the recipe the run started from (recorded, for `edgecls compare`)",
        CheckedWhenUsed("the recipe's name, recorded when a run starts"),
    )
    # data
    data: str | None = key(
        None,
        "a folder, a list file (path,label) or a built-in dataset name",
        CheckedWhenUsed("a folder, list file or built-in name, when the data is loaded"),
    )
    data_root: str | None = key(
        None,
        "where a torchvision dataset's files are (or are downloaded to)",
        CheckedWhenUsed("a folder, when a torchvision dataset is loaded"),
    )
    download: bool = key(False, "let a torchvision dataset download its files")
    val_fraction: float = key(
        0.2,
        "share of one folder of class folders split off as validation (stratified, seeded)",
        Range(0, 1, open_low=True, open_high=True),
    )
    input_size: int = key(
        224, "side of the square images the model sees, in pixels", Range(8, 2048)
    )
    grayscale: bool = key(False, "one input channel instead of three (001)")
    augment: str = key(
        "basic",
        "the per-image augmentation policy (AugMix is paper 000's)",
        OneOf(AUGMENT_POLICIES),
    )
    hflip: bool = key(True, "random horizontal flips (off for digits and text)")
    bbox_crop: bool = key(True, "crop to the boxes of list rows path,label,x0,y0,x1,y1 (001)")
    crop_scale: list = key(
        [0.08, 1.0],
        "area range of the random-resized crop of augment=crop (004)",
        Interval(Range(0, 1, open_low=True)),
    )
    hsb_jitter: float = key(
        0.0, "hue, saturation, brightness jitter strength (004: 0.4); 0: off", Range(0, 1)
    )
    pca_lighting: float = key(
        0.0, "std of AlexNet's PCA lighting noise (004: 0.1); 0: off", Range(0, 10)
    )
    random_erasing: float = key(
        0.0, "share of training images with a random box erased (001, 003)", Range(0, 1)
    )
    normalize: str = key(
        "model",
        "normalisation statistics: the model's (ImageNet's) or the training set's (`train`, 001)",
        OneOf(("model", "train")),
    )
    balance: str = key(
        "auto",
        "class imbalance: sampler, weights or none; auto: sampler above a 1:10 imbalance",
        OneOf(("auto", "sampler", "weights", "none")),
    )
    workers: int = key(2, "data-loader processes for per-image augmentation", Range(0, 256))
    cache: str = key(
        "auto",
        "where decoded images live: memory, a memory-mapped file in cache_dir (disk), or auto "
        "(disk when they would not fit comfortably in free memory); folders and list files only",
        OneOf(("auto", "memory", "disk")),
    )
    cache_dir: str | None = key(
        None,
        "the disk cache's folder; default: $EDGECLS_CACHE_DIR or ~/.cache/edgecls/images",
        CheckedWhenUsed("a folder, created when the disk cache is built"),
    )
    # model
    model: str = key(
        "mobilenetv3_large_100",
        "any timm model name, or an edgecls CIFAR ResNet (resnet20_cifar, resnet56_cifar)",
        CheckedWhenUsed("a timm model name, when the model is built"),
    )
    pretrained: bool = key(
        False, "start from ImageNet weights (those installed offline, or timm's)"
    )
    weights: str | None = key(
        None,
        "a state dict file to start from",
        CheckedWhenUsed("a state dict file, when the model is built"),
    )
    dropout: float = key(0.0, "dropout before the classifier", Range(0, 1, open_high=True))
    drop_path: float = key(
        0.0, "stochastic depth rate, for timm models that have it", Range(0, 1, open_high=True)
    )
    drop_block: float = key(
        0.0, "DropBlock rate (paper 003), for timm's ResNets", Range(0, 1, open_high=True)
    )
    anti_alias: str = key(
        "none",
        "anti-aliased downsampling: blur (BlurPool) or avg, in timm models (003)",
        OneOf(("none", "blur", "avg")),
    )
    zero_gamma: bool | None = key(
        None,
        "zero-initialise the last batch norm of each residual block (004); null: as the "
        "architecture does (timm's ResNets and edgecls's CIFAR ResNets do)",
    )
    head: str = key(
        "linear",
        "the classifier: linear, or a cosine AM-Softmax head (000)",
        OneOf(("linear", "am_softmax")),
    )
    head_width: int | None = key(
        None,
        "GhostNet / MobileNetV3 last-layer width (001: 320); null: the model's (1280)",
        Range(8, 65536),
    )
    am_scale: float | None = key(
        None,
        "AM-Softmax scale s; null: max(sqrt(2) ln(C - 1), 3) from the number of classes",
        Range(0, 1000, open_low=True),
    )
    am_margin: float = key(0.35, "AM-Softmax margin m (000: 0.35)", Range(0, 1))
    mutual: bool = key(
        False, "deep mutual learning with an AM-Softmax partner; the CE model is kept (000)"
    )
    # optimisation (paper 000, section 4.3)
    batch_size: int = key(64, "images per step (per process under DDP)", Range(1, 65536))
    lr: float | str = key(
        0.01,
        "the initial learning rate, or how to find it: tpe, range, grid or auto",
        Range(0, 10, open_low=True),
        OneOf(LR_SEARCH_METHODS),
    )
    lr_batch_scaling: bool = key(False, "scale lr linearly with batch_size / 256 (004)")
    momentum: float = key(0.9, "SGD momentum", Range(0, 1, open_high=True))
    weight_decay: float = key(5e-4, "L2 weight decay", Range(0, 1, open_high=True))
    no_bias_decay: bool = key(
        False, "no weight decay on biases and norm layers, biases at bias_lr_factor x lr (000)"
    )
    bias_lr_factor: float = key(
        2.0, "the biases' LR multiplier under no_bias_decay", Range(0, 100, open_low=True)
    )
    freeze_bn: bool = key(False, "batch norms keep their (pretrained) statistics while training")
    linear_probe: bool = key(
        False,
        "fit the classifier on frozen pretrained features by logistic regression first, then "
        "fine-tune everything (LP-FT): for a few hundred images",
    )
    sync_bn: bool = key(False, "several processes on GPUs: batch statistics over the global batch")
    sam: bool = key(False, "sharpness-aware minimisation around the optimizer (000)")
    sam_rho: float = key(0.05, "SAM's neighbourhood radius", Range(0, 10, open_low=True))
    sam_adaptive: bool = key(False, "adaptive SAM (ASAM): the radius scales with each weight")
    amp: bool = key(False, "mixed precision: bf16 on a CPU, fp16 with loss scaling on a GPU")
    optimizer: str = key("sgd", "the optimizer (timm's factory)", OneOf(OPTIMIZERS))
    max_epochs: int = key(200, "the most epochs a run trains", Range(1, 100_000))
    schedule: str = key(
        "plateau_v2", "the learning-rate schedule (000: plateau_v2)", OneOf(SCHEDULES)
    )
    warmup_epochs: int = key(
        5, "epochs of linear warmup from lr / warmup_epochs", Range(0, 100_000)
    )
    lr_factor: float = key(
        0.1,
        "plateau schedules: the LR's factor at each reduction (and at a divergence rollback)",
        Range(0, 1, open_low=True, open_high=True),
    )
    patience: int = key(
        5, "plateau schedules: epochs without improvement before a reduction", Range(0, 100_000)
    )
    min_lr_ratio: float = key(
        1 / 200, "plateau_v2: the lowest LR as a share of the initial", Range(0, 1, open_low=True)
    )
    forced_decay_at: float = key(
        0.75,
        "plateau_v2: share of max_epochs by which one reduction is forced",
        Range(0, 1, open_low=True),
    )
    lr_gamma: float = key(
        0.1, "step, multistep: the factor per drop; exp: per epoch", Range(0, 1, open_low=True)
    )
    lr_step_epochs: int = key(30, "step: epochs between drops", Range(1, 100_000))
    lr_milestones: list | None = key(
        None,
        "multistep: the epochs where the LR drops",
        CheckedWhenUsed("a list of increasing epochs, when the schedule is built"),
    )
    lr_power: float = key(2.0, "poly: (1 - progress) ** power", Range(0, 100, open_low=True))
    early_stopping: str = key(
        "none",
        "stop when val_loss or val_top1 stops improving (plateau_v2 stops by itself)",
        OneOf(("none", "val_loss", "val_top1")),
    )
    early_stopping_patience: int = key(
        10, "epochs without improvement before early_stopping stops", Range(1, 100_000)
    )
    keep_epoch: str = key(
        "best",
        "the weights best.pt keeps, evaluated and exported: the epoch with the best validation "
        "top-1 (a lower validation loss breaks ties), or the last epoch's, for a schedule that "
        "ends at a zero LR with too few validation images to pick an epoch by",
        OneOf(("best", "last")),
    )
    # tricks (papers 001-004)
    label_smoothing: float = key(
        0.0, "share of the target spread over all classes (004: 0.1)", Range(0, 1, open_high=True)
    )
    mixup: float = key(0.0, "Beta(alpha, alpha) of mixup; 0: off", Range(0, 100))
    cutmix: float = key(
        0.0, "Beta(alpha, alpha) of CutMix; 0: off (both on: one or the other)", Range(0, 100)
    )
    mixup_mode: str = key(
        "flip",
        "mixup's partner: the batch reversed (flip, timm), shuffled, or the previous batch (003)",
        OneOf(("flip", "shuffle", "two_batches")),
    )
    mix_prob: float = key(1.0, "share of batches mixed", Range(0, 1))
    mix_off_first: int = key(0, "epochs without mixing at the start", Range(0, 100_000))
    mix_off_last: int = key(
        0, "epochs without mixing at the end (of max_epochs)", Range(0, 100_000)
    )
    ema: float = key(
        0.0,
        "decay of an exponential moving average of the weights, evaluated and kept; 0: off",
        Range(0, 1, open_high=True),
    )
    tta: bool = key(
        False,
        "test-time augmentation: the final evaluation and the exported model average the logits "
        "of each image and its mirror image (twice the inference work)",
    )
    tta_shift: float = key(
        0.0,
        "test-time augmentation by translation: the final evaluation and the exported model also "
        "average the views (the image, and its mirror with tta) moved diagonally by this share "
        "of the side, up-left and down-right, edges repeated (three times the inference work); "
        "0: off",
        Range(0, 0.5),
    )
    progressive_resizing: float = key(
        0.0,
        "train early epochs on smaller images: the side starts at this share of input_size "
        "and grows linearly to the full size by three quarters of the run (of its time budget, "
        "else of max_epochs); 0: off",
        Range(0, 1, open_high=True),
    )
    whiten_stem: bool = key(
        False,
        "start the first convolution as a whitening of the training images' patches (their "
        "principal components, each with both signs), as the CIFAR-10 speed runs do",
    )
    stitch_mixup: str = key(
        "none",
        "stitch two images side by side (horizontal) or stacked (vertical) (002)",
        OneOf(("none", "horizontal", "vertical")),
    )
    stitch_alpha: float = key(
        0.2, "Beta(alpha, alpha) of the stitch's position", Range(0, 100, open_low=True)
    )
    teacher: str | None = key(
        None,
        "knowledge distillation from a run, checkpoint or timm model",
        CheckedWhenUsed("a run folder, checkpoint or timm model, when training starts"),
    )
    teacher_weights: str | None = key(
        None,
        "a timm teacher's state dict for these classes",
        CheckedWhenUsed("a state dict file, when training starts"),
    )
    kd_cache: bool = key(
        False, "the teacher runs once per image (needs augmentation and mixing off)"
    )
    kd_temperature: float = key(
        1.0, "distillation temperature T (002: 20, 003: 1)", Range(0, 1000, open_low=True)
    )
    kd_alpha: float = key(
        0.5, "weight of the teacher's soft targets; 1 - kd_alpha on the labels", Range(0, 1)
    )
    max_rollbacks: int = key(
        3,
        "divergence: times to go back to the last good checkpoint at lr x lr_factor",
        Range(0, 100),
    )
    # initial-LR search (lr=tpe|grid|range|auto)
    lr_search_trials: int = key(15, "TPE trials of the LR search (000: 15)", Range(1, 10_000))
    lr_search_epochs: int = key(6, "epochs of each LR-search trial (000: 6)", Range(1, 10_000))
    lr_search_range: list | None = key(
        None,
        "[low, high] of the LR search; null: the model family's (000)",
        Interval(Range(0, 10, open_low=True)),
    )
    lr_search_step: float = key(
        0.001, "the LR search's grid step (000: 0.001)", Range(0, 1, open_low=True)
    )
    lr_search_storage: str | None = key(
        None,
        f"an Optuna storage URL shared by workers (or ${STORAGE_ENV}); its password is never "
        "written",
        CheckedWhenUsed("an Optuna storage URL, when the LR search starts"),
    )
    # run
    seed: int = key(0, "seeds the split, initialisation and batches", Range(0, 2**32 - 1))
    device: str = key(
        "auto", "where to train: auto (a GPU when there is one), cpu or cuda", OneOf(DEVICES)
    )
    channels_last: bool = key(True, "channels-last memory layout (faster depthwise convolutions)")
    eval_batch_size: int = key(256, "images per evaluation batch", Range(1, 65536))
    export: str | None = key(
        None,
        'formats to export best.pt to after training (FP32), e.g. "onnx,openvino"',
        SomeOf(EXPORT_FORMATS),
    )
    audit: str = key(
        "leaks",
        "the data audit of audit.json and report.html: leaks (exact and near duplicates within "
        "and across splits, seconds), full (also likely label errors and outliers, from ImageNet "
        "features: about 20 s per 10,000 images) or off",
        OneOf(AUDIT_CHECKS),
    )
    tensorboard: bool = key(False, "TensorBoard event files in RUN/tensorboard")
    mlflow: bool | str = key(
        False,
        "MLflow tracking: true for the local store ./mlruns, or a tracking URI",
        CheckedWhenUsed("true, false or a tracking URI, when training starts"),
    )
    # planning (edgecls train DATA without a recipe)
    time_budget: str | float | None = key(
        None, "the whole run's wall-clock budget, e.g. 5m (the plan fits the run to it)", Duration()
    )
    max_latency_ms: float | None = key(
        None,
        "the plan keeps only models whose batch-1 CPU latency is below this",
        Range(0, 1e6, open_low=True),
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {item.name: item for item in dataclasses.fields(Config)}
_FIELD_TYPES = typing.get_type_hints(Config)


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _allowed_types(arg))
    return (typing.get_origin(annotation) or annotation,)


YAML_11_BOOLEANS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


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
    if bool in allowed and str not in allowed and str(value).lower() in YAML_11_BOOLEANS:
        value = YAML_11_BOOLEANS[str(value).lower()]  # hflip=off, as YAML 1.1 reads it
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise UserError(f"config key '{key}' expects {names}, got {value!r}")
    return value


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader read as YAML 1.2: 1e-3 is a number, not a string, and only true and
    false are booleans (YAML 1.1 also took off, on, yes and no: audit=off was refused)."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
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
    for name, item in FIELDS.items():
        for rule in item.metadata["rules"]:
            rule.check(name, getattr(config, name))
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


def rules_of(name: str) -> tuple[Rule, ...]:
    """What config key `name`'s value must be beyond its type."""
    return FIELDS[name].metadata["rules"]


def describe_keys() -> list[KeyDoc]:
    """Every config key, in declaration order: what the configuration reference is made of."""
    docs = []
    for item in FIELDS.values():
        default = item.default_factory() if item.default is dataclasses.MISSING else item.default
        rules = item.metadata["rules"]
        allowed = "; ".join(_describe_rule(item.name, rule) for rule in rules) or "true or false"
        names = " or ".join(
            "null" if t is type(None) else t.__name__
            for t in _allowed_types(_FIELD_TYPES[item.name])
        )
        docs.append(KeyDoc(item.name, names, default, allowed, item.metadata["help"]))
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
