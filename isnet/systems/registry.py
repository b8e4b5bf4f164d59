"""The systems by name: ``--method NAME`` on the command line, ``model.method`` in configs."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from .base import SystemModule

METHODS: dict[str, str] = {
    "standard": "isnet.systems.isnet:ISNetModule",  # with P = 0
    "isnet": "isnet.systems.isnet:ISNetModule",
    "pipeline": "isnet.systems.pipeline:PipelineModule",
    "multitask": "isnet.systems.multitask:MultiTaskModule",
    "sononet": "isnet.systems.sononet:AGSononetModule",
    "gain": "isnet.systems.gain:GAINModule",
    "rrr": "isnet.systems.rrr:RRRModule",
    "isnet_gi": "isnet.systems.gradinput:GradInputISNetModule",
    "vit": "isnet.systems.vit:ViTModule",
    "ham": "isnet.systems.ham:HAMModule",
}
"""Method name -> ``module:class`` of its :class:`~isnet.systems.base.SystemModule`."""


def system_class(method: str) -> type[SystemModule]:
    """The training-module class of ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    module, name = METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


def system_parameters(method: str) -> set[str]:
    """Names of the arguments ``method``'s module accepts (its own and its bases')."""
    names: set[str] = set()
    for cls in system_class(method).__mro__:
        if cls is SystemModule or not issubclass(cls, SystemModule) or "__init__" not in vars(cls):
            continue
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self":
                names.add(p.name)
    return names


def build_system(method: str, num_classes: int, **kwargs: Any) -> SystemModule:
    """A new, randomly initialised system.  ``standard`` is the ISNet module with ``P = 0``."""
    cls = system_class(method)
    unknown = set(kwargs) - system_parameters(method)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)} for method {method!r}; "
                         f"allowed: {sorted(system_parameters(method) - {'num_classes'})}")
    if method == "standard":
        kwargs["P"] = 0.0
    return cls(num_classes=num_classes, **kwargs)


def load_system(path: str | Path, map_location: str = "cpu") -> SystemModule:
    """Load any system's Lightning checkpoint (its method is stored in the checkpoint)."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    method = checkpoint.get("isnet_method", "isnet")
    return system_class(method).load_from_checkpoint(path, map_location=map_location)


def load_exported(path: str | Path, map_location: str = "cpu") -> torch.nn.Module:
    """The deployed network (eval mode) from a ``model.pt`` written by ``SystemModule.export``."""
    data = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(data, dict) or data.get("format") != "isnet-system/1":
        raise ValueError(f"{path} is not an exported isnet system (model.pt from `isnet fit` / export)")
    hparams = dict(data["hparams"])
    module = system_class(data["method"])(**hparams)
    module.load_state_dict(data["state_dict"])
    return module.deployed.eval()
