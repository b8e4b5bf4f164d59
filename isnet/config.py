"""YAML run configurations in the Lightning style: ``model``, ``data`` and ``trainer`` sections.

Example::

    seed_everything: 0
    out: runs/covid
    model:            # the system's arguments (num_classes comes from the data)
      method: isnet   # any name of isnet.systems.registry.METHODS (`isnet fit --help` lists them)
      variant: full   # the ISNet's: full, selective, stochastic or dual (isnet.systems.variants.VARIANTS)
      backbone: densenet121
      P: 0.7
      d: 0.9
      init_from: runs/std/checkpoints/best-epoch=12.ckpt   # optional warm start (isnet.warm_start)
    data:             # isnet.data.MaskedImageDataModule arguments
      root: /data/covid
      size: 224
      grayscale: true
      equalize: true
    trainer:          # lightning.Trainer arguments, and heatmap_images (see isnet.training.train)
      max_epochs: 48
      precision: 16-mixed

Unknown keys, wrong sections and values of the wrong kind are errors that name the key.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import yaml

SECTIONS = ("model", "data", "trainer")
TOP_LEVEL = ("seed_everything", "out", *SECTIONS)


class ConfigError(ValueError):
    """A broken configuration file or override."""


def _parameters(fn: Any, skip: Sequence[str] = ("self",)) -> set[str]:
    return {name for name in inspect.signature(fn).parameters if name not in skip}


def allowed_keys(method: str = "isnet") -> dict[str, set[str]]:
    """Keys each section accepts; the model section's depend on the method."""
    import lightning as L

    from .data import MaskedImageDataModule
    from .systems.registry import system_parameters

    return {
        "model": (system_parameters(method) | {"method", "init_from"}) - {"num_classes", "class_names"},
        "data": _parameters(MaskedImageDataModule.__init__),
        # heatmap_images: isnet.training.train's own option (TensorBoard heatmaps per class, 0: none)
        "trainer": (_parameters(L.Trainer.__init__) - {"callbacks", "logger", "gradient_clip_val"}) | {"heatmap_images"},
    }


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse override value {text!r}: {error}") from error


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config and apply ``section.key=value`` overrides.

    Returns:
        ``{"seed_everything": int, "out": str, "model": {...}, "data": {...}, "trainer": {...}}``.
    """
    config: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as error:
            raise ConfigError(f"no config file {path}") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(config, dict):
            raise ConfigError(f"{path} must hold a mapping with sections {list(SECTIONS)}")
    for item in overrides:
        if "=" in item and item.split("=", 1)[0] in ("out", "seed_everything"):
            key, value = item.split("=", 1)
            config[key] = _parse_value(value)
            continue
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} must look like section.key=value (or out=... / seed_everything=...)")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        config.setdefault(section, {})
        if not isinstance(config[section], dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        config[section][key] = _parse_value(value)
    unknown = set(config) - set(TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}; allowed: {list(TOP_LEVEL)}")
    model = config.get("model") or {}
    method = model.get("method", "isnet") if isinstance(model, dict) else "isnet"
    from .systems.registry import METHODS

    if method not in METHODS:
        raise ConfigError(f"model.method {method!r} is not a method; choose one of {', '.join(METHODS)}")
    allowed = allowed_keys(method)
    for section in SECTIONS:
        values = config.setdefault(section, {}) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"section {section!r} must be a mapping, got {type(values).__name__}")
        config[section] = values
        bad = set(values) - allowed[section]
        if bad:
            raise ConfigError(f"unknown key(s) {sorted(bad)} in section {section!r}; allowed: {sorted(allowed[section])}")
    if "root" not in config["data"]:
        raise ConfigError("section 'data' needs 'root': the dataset folder with manifest.csv")
    for key, kind in (("P", (int, float)), ("d", (int, float)), ("lr", (int, float)), ("backbone", str),
                      ("init_from", str)):
        if key in config["model"] and not isinstance(config["model"][key], kind):
            raise ConfigError(f"model.{key} has the wrong type: {config['model'][key]!r}")
    if "variant" in config["model"]:
        from .systems.variants import VARIANTS

        if config["model"]["variant"] not in VARIANTS:
            raise ConfigError(f"model.variant {config['model']['variant']!r} is not an ISNet variant; choose one of "
                              f"{', '.join(VARIANTS)}")
    for key in ("deep_supervision", "range_follows"):
        if key in config["model"] and not isinstance(config["model"][key], bool):
            raise ConfigError(f"model.{key} must be true or false, got {config['model'][key]!r}")
    for key, what in (("background_swap", "a share"), ("background_jitter", "a strength")):
        value = config["model"].get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
            raise ConfigError(f"model.{key} must be {what} in [0, 1] (or null: automatic), got {value!r}")
    config["model"].setdefault("method", "isnet")
    config.setdefault("seed_everything", 0)
    config.setdefault("out", "runs/isnet")
    return config
