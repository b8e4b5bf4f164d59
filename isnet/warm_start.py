"""Warm starts: a new system's deployed network initialised from the weights of a trained one.

``isnet fit --init-from PATH`` (config key ``model.init_from``) and :func:`init_from` copy the
weights (and buffers, e.g. batch-norm statistics) of the deployed network only, never optimiser
state, loss settings or schedules, from

* a Lightning checkpoint of any system (``isnet fit``'s ``checkpoints/best-*.ckpt``),
* an exported system (``model.pt``, format ``isnet-system/1``), or
* an isnet model file (``backbone.pt``, format ``isnet-model/1``, :func:`isnet.backbones.save_model`).

Architectures must match: a different backbone name, number of classes or input channels, or
missing / unexpected weights or weights of another shape are errors that name the mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .systems.base import SystemModule


class WarmStartError(ValueError):
    """The source of a warm start does not fit the model it should initialise."""


def _source(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict of the deployed network, description)`` of a checkpoint or model file."""
    if not path.is_file():
        raise WarmStartError(f"init_from: no file {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file
        raise WarmStartError(f"init_from: cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise WarmStartError(f"init_from: {path} is neither a Lightning checkpoint nor an isnet model file")
    if data.get("format") == "isnet-model/1":
        info = {"kind": "isnet model file", "backbone": data.get("arch"), "num_classes": data.get("num_classes"),
                "in_channels": data.get("in_channels"), "arch_kwargs": data.get("arch_kwargs") or {}}
        return dict(data["state_dict"]), info
    if data.get("format") == "isnet-system/1":
        from .systems.registry import load_exported

        hparams = data.get("hparams", {})
        deployed = load_exported(path)
        kind = f"exported {data.get('method')} system"
    elif "state_dict" in data and "hyper_parameters" in data:
        from .systems.registry import load_system

        hparams = data["hyper_parameters"]
        deployed = load_system(path).deployed
        kind = f"{data.get('isnet_method', 'isnet')} checkpoint"
    else:
        raise WarmStartError(f"init_from: {path} is neither a Lightning checkpoint nor an isnet model file "
                             "(backbone.pt / model.pt)")
    info = {"kind": kind, "backbone": hparams.get("backbone"), "num_classes": hparams.get("num_classes"),
            "in_channels": hparams.get("in_channels", 3), "arch_kwargs": hparams.get("arch_kwargs") or {}}
    return {k: v.detach() for k, v in deployed.state_dict().items()}, info


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def init_from(module: SystemModule, path: str | Path) -> dict[str, Any]:
    """Load the deployed network's weights of ``module`` from a checkpoint or model file.

    Args:
        module: the system to initialise (its :attr:`~SystemModule.deployed` network is overwritten).
        path: Lightning checkpoint, exported ``model.pt`` or isnet model file ``backbone.pt``.

    Returns:
        What was loaded: ``kind`` of file, ``backbone``, ``num_classes``, ``in_channels`` of the
        source and ``tensors`` (the number of weights and buffers copied).

    Raises:
        WarmStartError: an unreadable file, or a source whose backbone name, number of classes,
            input channels, weight names or weight shapes differ from ``module``'s.
    """
    path = Path(path)
    state, info = _source(path)
    hp = module.hparams
    for key, what in (("backbone", "backbone"), ("num_classes", "number of classes"),
                      ("in_channels", "number of input channels")):
        mine, theirs = hp.get(key, 3 if key == "in_channels" else None), info.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise WarmStartError(f"init_from {path}: its {what} is {theirs!r}, this model's is {mine!r}")
    target: nn.Module = module.deployed
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing weights {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected weights {_listed(unexpected)}")
        if shapes:
            problems.append(f"shape mismatch (source vs this model) {_listed(shapes)}")
        mine = {k: hp.get(k) for k in ("backbone", "arch_kwargs") if hp.get(k) is not None}
        raise WarmStartError(f"init_from {path}: the architectures differ ({info['kind']} "
                             f"{ {k: info[k] for k in ('backbone', 'arch_kwargs')} }, this model {mine}): "
                             + "; ".join(problems))
    target.load_state_dict(state, strict=True)
    return {**info, "tensors": len(state)}
