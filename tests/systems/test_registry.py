"""The registry: the one list of methods, the settings a name fixes, and what reads it."""

import lightning
import pytest
import torch

from isnet.systems.base import SystemModule
from isnet.systems.isnet import ISNetModule
from isnet.systems.registry import (
    METHODS,
    TUNABLE,
    SystemSpec,
    build_system,
    load_system,
    system_class,
    system_parameters,
)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_names_a_system_of_the_systems_package(method):
    spec = METHODS[method]
    assert isinstance(spec, SystemSpec)
    assert spec.target.startswith("isnet.systems.")  # not the training driver: no import cycle
    cls = system_class(method)
    assert issubclass(cls, SystemModule)
    assert set(spec.fixed) <= system_parameters(method)
    assert set(spec.grid) <= system_parameters(method)
    assert spec.refine is None or spec.refine[0] in spec.grid


def test_a_name_fixes_its_settings_over_the_given_ones():
    standard = build_system("standard", 3, backbone="small_cnn", arch_kwargs={"width": 4}, P=0.7)
    isnet = build_system("isnet", 3, backbone="small_cnn", arch_kwargs={"width": 4}, P=0.7)
    assert type(standard) is type(isnet) is ISNetModule
    assert (standard.hparams.P, standard.method, standard.uses_heatmaps) == (0.0, "standard", False)
    assert (isnet.hparams.P, isnet.method) == (0.7, "isnet")


def test_a_variant_is_one_more_entry(monkeypatch):
    """A name that builds an existing system with other fixed settings needs no code (the way
    variants of the ISNet are added)."""
    monkeypatch.setitem(METHODS, "isnet_flat", SystemSpec(METHODS["isnet"].target, fixed={"d": 1.0, "E": 2.0}))
    module = build_system("isnet_flat", 3, backbone="small_cnn", arch_kwargs={"width": 4}, P=0.5, d=0.9)
    assert isinstance(module, ISNetModule)
    assert (module.hparams.P, module.hparams.d, module.hparams.E) == (0.5, 1.0, 2.0)


def test_unknown_methods_and_settings_are_named():
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of standard, isnet"):
        system_class("nope")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['lambda1'\] for method 'isnet'"):
        build_system("isnet", 3, lambda1=1.0)


def test_the_tunable_methods_are_those_with_a_grid():
    from isnet.tune import GRIDS, REFINE

    variants = ("isnet_selective", "isnet_stochastic", "isnet_dual")
    assert TUNABLE == tuple(GRIDS) == ("isnet", *variants, "multitask", "gain", "rrr", "isnet_gi")
    assert GRIDS["isnet_gi"] == GRIDS["isnet"] == {"P": [0.2, 0.4, 0.6, 0.8], "d": [0.9, 0.996, 1.0]}
    assert all(GRIDS[v] == GRIDS["isnet"] for v in variants)
    assert GRIDS["rrr"] == {"lambda1": [10.0**i for i in range(9)]}
    assert REFINE == {"isnet": ("P", 0.1), **{v: ("P", 0.1) for v in variants}, "multitask": ("P", 0.05),
                      "isnet_gi": ("P", 0.1)}


@pytest.mark.parametrize("method", ["standard", "isnet", "isnet_selective", "isnet_dual"])
def test_checkpoints_load_back_as_their_method(tmp_path, method):
    """The checkpoint stores the method name and the hyper-parameters (the fixed ones among them)."""
    module = build_system(method, 3, backbone="small_cnn", arch_kwargs={"width": 4})
    path = tmp_path / "model.ckpt"
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)  # as Lightning's checkpoint callbacks write it
    torch.save(checkpoint, path)
    loaded = load_system(path)
    assert type(loaded) is ISNetModule and loaded.method == method and loaded.hparams.P == module.hparams.P
