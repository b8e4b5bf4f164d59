"""The systems by name: ``--method NAME`` on the command line, ``model.method`` in configs.

:data:`METHODS` is the one list of methods: the command line's help, the config check,
the hyper-parameter search (:mod:`isnet.tune`) and the built-in benchmark
(:mod:`isnet.benchmark`) all read it.  A name stands for a system class and, optionally,
settings that the name fixes: ``standard`` is the ISNet module with ``P = 0``, and a
variant of a system is one more entry with its own fixed settings.

Importing this module does not import Lightning (the command line builds its help from it);
the system classes are imported when a method is used.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .variants import VARIANTS

if TYPE_CHECKING:
    from .base import SystemModule


@dataclass(frozen=True)
class SystemSpec:
    """What a method name builds.

    Attributes:
        target: ``"module:Class"`` of its :class:`~isnet.systems.base.SystemModule`.
        fixed: arguments that the name sets, over any given (``standard``: ``{"P": 0.0}``).
        grid: first-stage search grid of :func:`isnet.tune.run_tune`, ``{argument: values}``
            (empty: no default grid).
        refine: ``(argument, step)`` that the search's second stage varies by +/- step
            around the best first-stage setting (``None``: no second stage).
    """

    target: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    refine: tuple[str, float] | None = None


_ISNET_GRID = {"P": (0.2, 0.4, 0.6, 0.8), "d": (0.9, 0.996, 1.0)}  # Appendix F.3, also for ISNet Grad*Input
_ISNET = "isnet.systems.isnet:ISNetModule"

METHODS: dict[str, SystemSpec] = {
    "standard": SystemSpec(_ISNET, fixed={"P": 0.0}),
    "isnet": SystemSpec(_ISNET, grid=_ISNET_GRID, refine=("P", 0.1)),
    **{  # the Faster ISNet family: the ISNet with its variant fixed (isnet.systems.variants)
        f"isnet_{variant}": SystemSpec(_ISNET, fixed={"variant": variant}, grid=_ISNET_GRID, refine=("P", 0.1))
        for variant in VARIANTS if variant != "full"
    },
    "pipeline": SystemSpec("isnet.systems.pipeline:PipelineModule"),
    "multitask": SystemSpec("isnet.systems.multitask:MultiTaskModule",
                            grid={"P": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}, refine=("P", 0.05)),
    "sononet": SystemSpec("isnet.systems.sononet:AGSononetModule"),
    "gain": SystemSpec("isnet.systems.gain:GAINModule",
                       grid={"alpha": (1.0, 10.0, 100.0, 1000.0), "omega_e": (1.0, 10.0, 100.0, 1000.0)}),
    "rrr": SystemSpec("isnet.systems.rrr:RRRModule", grid={"lambda1": tuple(10.0**i for i in range(9))}),
    "isnet_gi": SystemSpec("isnet.systems.gradinput:GradInputISNetModule", grid=_ISNET_GRID, refine=("P", 0.1)),
    "vit": SystemSpec("isnet.systems.vit:ViTModule"),
    "ham": SystemSpec("isnet.systems.ham:HAMModule"),
}
"""Method name -> its :class:`SystemSpec`, in the order of reports and help texts."""

ISNETS: tuple[str, ...] = tuple(name for name, spec in METHODS.items()
                                if spec.target == _ISNET and spec.fixed.get("P", 1.0) > 0)
"""The ISNet methods: ``isnet`` and its Faster ISNet variants (``isnet_<variant>``)."""

TUNABLE: tuple[str, ...] = tuple(name for name, spec in METHODS.items() if spec.grid)
"""The methods with a default search grid (``isnet tune --method``)."""


def system_class(method: str) -> type[SystemModule]:
    """The training-module class of ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    module, name = METHODS[method].target.split(":")
    return getattr(importlib.import_module(module), name)


def system_parameters(method: str) -> set[str]:
    """Names of the arguments ``method``'s module accepts (its own and its bases')."""
    from .base import SystemModule

    names: set[str] = set()
    for cls in system_class(method).__mro__:
        if cls is SystemModule or not issubclass(cls, SystemModule) or "__init__" not in vars(cls):
            continue
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self":
                names.add(p.name)
    return names


def build_system(method: str, num_classes: int, **kwargs: Any) -> SystemModule:
    """A new, randomly initialised system: ``method``'s class with ``kwargs`` and the settings
    its name fixes (:attr:`SystemSpec.fixed`, which win over ``kwargs``)."""
    cls = system_class(method)
    unknown = set(kwargs) - system_parameters(method)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)} for method {method!r}; "
                         f"allowed: {sorted(system_parameters(method) - {'num_classes'})}")
    return cls(num_classes=num_classes, **{**kwargs, **METHODS[method].fixed})


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
