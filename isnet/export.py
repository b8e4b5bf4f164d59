"""Deployment formats of a trained classifier, and loading them back for prediction.

A deployed network maps images ``(B, C, H, W)`` (float32, values in [0, 1], already
preprocessed) to logits ``(B, K)``.  :func:`export_network` writes it as

- ``model``: the isnet model file (``.pt``: architecture or method, weights, class
  names, preprocessing), written by the caller's ``write_model``;
- ``onnx``: ONNX (``.onnx``) from ``torch.onnx.export``'s ``torch.export``-based
  exporter (``dynamo=True``; the TorchScript-based one is deprecated), opset
  :data:`ONNX_OPSET`, with a dynamic batch axis; class names and preprocessing are
  stored as JSON in the model's ``metadata_props`` under the key ``isnet``;
- ``torch_export``: a ``torch.export`` program saved with ``torch.export.save``
  (``.pt2``), the same JSON in its extra file ``isnet.json``;

plus ``preprocessing.json`` next to them.  :func:`load_deployed` reads any of the
three back as ``(network, info)``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .jsonio import dumps, write_json

FORMATS = ("model", "onnx", "torch_export")
"""Deployment formats, in the order they are written."""

ONNX_OPSET = 18
"""ONNX opset of exported models: the opset the ``torch.export``-based exporter of
torch 2.x emits natively (other opsets go through a version-conversion pass), and
one onnxruntime has run since 1.14."""

METADATA_KEY = "isnet"
"""Key of the JSON metadata in an ONNX model's ``metadata_props`` (``isnet.json`` in a ``.pt2``)."""

SUFFIXES = {"model": ".pt", "onnx": ".onnx", "torch_export": ".pt2"}

MAX_BATCH = 65536  # upper bound of the dynamic batch axis (torch.export needs a finite range to reason with)


class ExportError(RuntimeError):
    """A network could not be written in a deployment format (names the format and the cause)."""


def check_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """``"all"``, one format name or several -> the formats in :data:`FORMATS` order; unknown names raise."""
    names = [formats] if isinstance(formats, str) else list(formats)
    if "all" in names:
        return FORMATS
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown export format(s) {unknown or names}; choose from {', '.join(FORMATS)} or all")
    return tuple(f for f in FORMATS if f in names)


def deployment_metadata(
    *,
    class_names: Sequence[str] | None,
    num_classes: int,
    in_channels: int,
    preprocessing: dict[str, Any] | None,
    multilabel: bool = False,
    thresholds: Sequence[float] | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    """What a deployed model needs besides its weights: the JSON stored with every format."""
    names = [str(n) for n in class_names] if class_names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} logits")
    if thresholds is not None and len(thresholds) != num_classes:
        raise ValueError(f"{len(thresholds)} thresholds for a model with {num_classes} labels")
    return {
        "class_names": names,
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "preprocessing": dict(preprocessing or {}),
        "multilabel": bool(multilabel),
        "thresholds": [float(t) for t in thresholds] if thresholds is not None else None,
        "method": method,
        "input": "float32 (B, C, H, W), values in [0, 1]",
    }


def _cpu_copy(network: nn.Module) -> nn.Module:
    """The network in eval mode on the CPU with contiguous weights, without touching the caller's
    module (its mode, device or memory format)."""
    tensors = [*network.parameters(), *network.buffers()]
    moved = any(t.device.type != "cpu" for t in tensors) or network.training
    strided = any(not t.is_contiguous() for t in tensors)  # channels-last weights: .pt2 archives want plain ones
    if not (moved or strided):
        return network
    net = copy.deepcopy(network).cpu().eval()
    if strided:
        net = net.to(memory_format=torch.contiguous_format)
    return net


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def export_onnx(network: nn.Module, path: str | Path, example: Tensor, metadata: dict[str, Any],
                *, opset: int = ONNX_OPSET) -> Path:
    """Write ``network`` (eval mode, CPU) as ONNX with a dynamic batch axis.

    Args:
        network: ``images (B, C, H, W) -> logits (B, K)``.
        path: the ``.onnx`` file.
        example: an input ``(B, C, H, W)``; its height and width are fixed in the graph.
        metadata: stored as JSON in ``metadata_props["isnet"]``.
        opset: ONNX opset.

    The input is named ``images``, the output ``logits``.
    """
    path = Path(path)
    net = _cpu_copy(network)
    try:
        with torch.no_grad():
            program = torch.onnx.export(net, (example.cpu(),), dynamo=True, opset_version=opset,
                                        dynamic_shapes=({0: _batch_dim()},), input_names=["images"],
                                        output_names=["logits"], verbose=False)
        program.model.metadata_props[METADATA_KEY] = dumps(metadata, indent=None)
        program.save(str(path))
    except Exception as error:  # noqa: BLE001 - any exporter failure, reported with its cause
        raise ExportError(f"cannot export {type(network).__name__} to ONNX: {type(error).__name__}: "
                          f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}") from error
    return path


def export_torch(network: nn.Module, path: str | Path, example: Tensor, metadata: dict[str, Any]) -> Path:
    """Write ``network`` (eval mode, CPU) as a ``torch.export`` program (``.pt2``) with a dynamic
    batch axis; ``metadata`` goes into its extra file ``isnet.json``.  Reload with
    :func:`load_deployed` or ``torch.export.load(path).module()``."""
    path = Path(path)
    net = _cpu_copy(network)
    try:
        with torch.no_grad():
            program = torch.export.export(net, (example.cpu(),), dynamic_shapes=({0: _batch_dim()},))
        torch.export.save(program, path, extra_files={f"{METADATA_KEY}.json": dumps(metadata, indent=None)})
    except Exception as error:  # noqa: BLE001 - any exporter failure, reported with its cause
        raise ExportError(f"cannot export {type(network).__name__} with torch.export: {type(error).__name__}: "
                          f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}") from error
    return path


def export_network(
    network: nn.Module,
    folder: str | Path,
    *,
    stem: str,
    metadata: dict[str, Any],
    write_model: Callable[[Path], Path],
    formats: str | Iterable[str] = "all",
    example_size: int = 64,
) -> dict[str, Path]:
    """Write ``network`` in the requested deployment formats, and ``preprocessing.json``.

    Args:
        network: the deployed network, ``images (B, C, H, W) -> logits (B, K)``; left in
            its mode and on its device.
        folder: output folder (created).
        stem: file name without suffix (``backbone`` -> ``backbone.pt``, ``.onnx``, ``.pt2``).
        metadata: from :func:`deployment_metadata`.
        write_model: writes the isnet model file to the path it is given and returns it.
        formats: ``"all"`` or names from :data:`FORMATS`.
        example_size: side of the example input (pixels) used when the preprocessing
            records no ``size``; ONNX and torch.export fix the height and width to it.

    Returns:
        ``{format: path}`` for each format written, and ``"preprocessing"``.
    """
    chosen = check_formats(formats)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if "model" in chosen:
        files["model"] = write_model(folder / f"{stem}{SUFFIXES['model']}")
    if "onnx" in chosen or "torch_export" in chosen:
        size = int(metadata["preprocessing"].get("size") or example_size)
        example = torch.rand(2, metadata["in_channels"], size, size)
        if "onnx" in chosen:
            files["onnx"] = export_onnx(network, folder / f"{stem}.onnx", example, metadata)
        if "torch_export" in chosen:
            files["torch_export"] = export_torch(network, folder / f"{stem}.pt2", example, metadata)
    files["preprocessing"] = folder / "preprocessing.json"
    write_json(files["preprocessing"], metadata)
    return files


# -- loading ------------------------------------------------------------------------------------


class OnnxNetwork:
    """An ``.onnx`` file run with onnxruntime on the CPU: ``images (B, C, H, W) -> logits (B, K)`` as tensors."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - any unreadable file
            raise ValueError(f"{path} is not a readable ONNX model: {error}") from error
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: Tensor) -> Tensor:
        feed = {self.input_name: images.detach().cpu().float().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def _onnx_metadata(path: Path) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file
        raise ValueError(f"{path} is not a readable ONNX model: {error}") from error
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path} has no isnet metadata (metadata_props['{METADATA_KEY}']); export it with isnet")
    return json.loads(props[METADATA_KEY])


def load_deployed(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Callable[[Tensor], Tensor], dict[str, Any]]:
    """Load an exported model for prediction.

    Args:
        path: an isnet model file (``backbone.pt`` from :func:`isnet.backbones.save_model`
            or ``model.pt`` of any system), an ``.onnx`` or a ``.pt2`` file written by
            :func:`export_network`.

    Returns:
        ``(network, info)``: ``network(images (B, C, H, W)) -> logits (B, K)`` (an
        ``nn.Module`` in eval mode, or :class:`OnnxNetwork`), and ``info`` with
        ``class_names``, ``num_classes``, ``in_channels``, ``preprocessing``,
        ``multilabel``, ``thresholds`` (``None`` or one per label), ``format`` and
        ``explainer``: a system file's own explainer (``images -> (logits, heatmaps
        (B, K, C', H, W))`` for all classes, see ``SystemModule.explainer``), else ``None``
        (explain a backbone file's network with :class:`isnet.LRPGraph`; ONNX and
        ``.pt2`` files keep no layers to explain).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no model file at {path}")
    if path.suffix == ".onnx":
        info = _onnx_metadata(path)
        return OnnxNetwork(path), dict(info, format="onnx", explainer=None)
    if path.suffix == ".pt2":
        extra = {f"{METADATA_KEY}.json": ""}
        try:
            program = torch.export.load(path, extra_files=extra)
        except Exception as error:  # noqa: BLE001 - any unreadable file
            raise ValueError(f"{path} is not a readable torch.export program: {error}") from error
        if not extra[f"{METADATA_KEY}.json"]:
            raise ValueError(f"{path} has no isnet metadata ({METADATA_KEY}.json); export it with isnet")
        info = json.loads(extra[f"{METADATA_KEY}.json"])
        return program.module(), dict(info, format="torch_export", explainer=None)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)  # tensors and plain data, no code
    except Exception as error:  # noqa: BLE001 - any unreadable file
        raise ValueError(f"{path} is not an isnet model file: {error}") from error
    kind = data.get("format") if isinstance(data, dict) else None
    if kind == "isnet-model/1":
        from .backbones import load_model

        model, saved = load_model(path, map_location)
        info = deployment_metadata(class_names=saved.get("class_names"), num_classes=saved["num_classes"],
                                   in_channels=saved["in_channels"], preprocessing=saved.get("preprocessing"),
                                   multilabel=saved.get("multilabel", False), thresholds=saved.get("thresholds"),
                                   method=saved.get("method"))
        return model, dict(info, format="model", explainer=None)
    if kind == "isnet-system/1":
        from .systems.registry import system_class

        hp = dict(data["hparams"])
        module = system_class(data["method"])(**hp)
        module.load_state_dict(data["state_dict"])
        module.eval()
        num_classes = int(hp["num_classes"])
        info = deployment_metadata(class_names=hp.get("class_names"), num_classes=num_classes,
                                   in_channels=hp.get("in_channels", 3), preprocessing=data.get("preprocessing"),
                                   multilabel=hp.get("multilabel", False), thresholds=data.get("thresholds"),
                                   method=data["method"])
        return module.deployed, dict(info, format="model", explainer=module.explainer())
    raise ValueError(f"{path} is not an exported isnet model (.pt model file, .onnx or .pt2)")
