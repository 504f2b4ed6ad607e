"""Training configuration: the defaults (here, and only here), YAML recipes and key=value overrides.

A recipe is a YAML file of `key: value` pairs that override these defaults; the ones shipped with
edgecls live in `edgecls/recipes/`. Every key can also be set on the command line as `key=value`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgecls.errors import UserError

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_DATA = "digits"

CHOICES: dict[str, tuple[str, ...]] = {
    "schedule": ("plateau_v2", "cosine", "constant", "budget_linear"),
    "augment": ("augmix", "basic", "none"),
    "device": ("auto", "cpu", "cuda"),
    "head": ("linear", "am_softmax"),
}
LR_SEARCH_METHODS = ("auto", "tpe", "range", "grid")


@dataclass
class Config:
    # data
    data: str | None = None
    data_root: str | None = None
    download: bool = False
    val_fraction: float = 0.2
    input_size: int = 224
    grayscale: bool = False
    augment: str = "basic"
    hflip: bool = True
    workers: int = 2
    # model
    model: str = "mobilenetv3_large_100"
    pretrained: bool = False
    weights: str | None = None
    dropout: float = 0.0
    head: str = "linear"
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
    sam: bool = False
    sam_rho: float = 0.05
    sam_adaptive: bool = False
    amp: bool = False
    max_epochs: int = 200
    schedule: str = "plateau_v2"
    warmup_epochs: int = 5
    lr_factor: float = 0.1
    patience: int = 5
    min_lr_ratio: float = 1 / 200
    forced_decay_at: float = 0.75
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
    # planning (edgecls train DATA without a recipe): the whole run's wall-clock budget, e.g. 5m
    time_budget: str | float | None = None
    max_latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        value = str(value)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise UserError(f"config key '{key}' expects {names}, got {value!r}")
    choices = LR_SEARCH_METHODS if key == "lr" and isinstance(value, str) else CHOICES.get(key)
    if choices and value not in choices:
        raise UserError(f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}")
    return value


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
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"recipe {path} is not valid YAML: {error}") from None
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
            overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
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
    if not 0.0 < config.val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1, got {config.val_fraction}")
    for key in ("batch_size", "max_epochs", "input_size", "eval_batch_size"):
        if getattr(config, key) < 1:
            raise UserError(f"config key '{key}' must be at least 1, got {getattr(config, key)}")
    if isinstance(config.lr, float) and config.lr <= 0:
        raise UserError(f"config key 'lr' must be positive, got {config.lr}")
    unknown = set((config.export or "").split(",")) - {"", "onnx", "openvino"}
    if unknown:
        raise UserError(f"config key 'export' takes onnx and/or openvino, got {config.export!r}")
    if config.lr_search_range is not None and (
        len(config.lr_search_range) != 2
        or not all(isinstance(v, (int, float)) and v > 0 for v in config.lr_search_range)
        or config.lr_search_range[0] >= config.lr_search_range[1]
    ):
        raise UserError(f"lr_search_range must be [low, high], got {config.lr_search_range}")
    return config


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
    return config, changed


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
