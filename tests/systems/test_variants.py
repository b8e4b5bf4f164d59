"""The Faster ISNet family: selective, stochastic and dual ISNets, and LRP deep supervision."""

import pytest
import torch
import torchvision

from isnet.backbones import SmallCNN
from isnet.systems.deep_supervision import pool_masks, supervised_layers
from isnet.systems.variants import VARIANTS, check_variant, draw_logits, explained

from .helpers import tiny_batch


# -- which logits each variant explains --------------------------------------------------------------
def test_stochastic_draws_the_winner_about_half_of_the_time_and_the_others_uniformly():
    logits = torch.randn(4000, 5, generator=torch.Generator().manual_seed(3))
    winners = logits.argmax(1)
    drawn = draw_logits(logits, torch.Generator().manual_seed(0))[:, 0]
    assert drawn.shape == (4000,)
    won = (drawn == winners).float().mean().item()
    assert 0.46 < won < 0.54, won  # 1/2, with about 5 standard deviations of slack
    others = drawn[drawn != winners]
    rank = others - (others > winners[drawn != winners]).long()  # position among the other 4 classes
    counts = torch.bincount(rank, minlength=4).float() / len(others)
    assert counts.min() > 0.21 and counts.max() < 0.29, counts  # uniform over the other classes
    again = draw_logits(logits, torch.Generator().manual_seed(0))[:, 0]
    assert torch.equal(drawn, again)  # deterministic given the generator
    assert draw_logits(torch.randn(6, 1), torch.Generator()).eq(0).all()  # one class: always it


def test_each_variant_says_what_its_maps_explain():
    logits = torch.tensor([[0.2, 2.0, -1.0], [1.0, 0.0, 3.0]], requires_grad=True)
    assert explained("full") == {"classes": None}
    selective = explained("selective")["logit_weights"](logits)
    assert selective.shape == (2, 1, 3) and selective.requires_grad
    assert selective[0, 0, 2] > 0 and selective[1, 0, 1] > 0  # the lowest logit by default (the authors' code)
    highest = explained("selective", selective_class="highest")["logit_weights"](logits)
    assert highest[0, 0, 1] > 0 and highest[1, 0, 2] > 0
    for variant in ("stochastic", "dual"):
        classes = explained(variant, generator=torch.Generator().manual_seed(1))["classes"](logits)
        assert classes.shape == (2, 1) and classes.dtype == torch.long
    with pytest.raises(ValueError, match="random generator"):
        explained("stochastic")
    with pytest.raises(ValueError, match="selective_class must be one of"):
        explained("selective", selective_class="median")


def test_bad_variants_get_errors_naming_the_choices():
    assert VARIANTS == ("full", "selective", "stochastic", "dual")
    with pytest.raises(ValueError, match="choose one of full, selective, stochastic, dual"):
        check_variant("fast")
    with pytest.raises(ValueError, match="single-label"):
        check_variant("selective", multilabel=True)
    assert check_variant("stochastic", multilabel=True) == "stochastic"


# -- deep supervision --------------------------------------------------------------------------------
def test_supervised_layers_are_the_stage_outputs():
    assert supervised_layers(torchvision.models.resnet18(num_classes=2)) == ["layer1", "layer2", "layer3", "layer4"]
    assert supervised_layers(torchvision.models.densenet121(num_classes=2)) == [
        f"features.denseblock{i}" for i in range(1, 5)]
    assert supervised_layers(torchvision.models.vgg11(num_classes=2)) == [
        "features.2", "features.5", "features.10", "features.15", "features.20"]
    assert supervised_layers(SmallCNN(2, batch_norm=False)) == ["features.2", "features.5", "features.8"]
    with pytest.raises(ValueError, match="does not know the stages of Linear"):
        supervised_layers(torch.nn.Linear(2, 2))


def test_masks_are_pooled_so_that_any_foreground_pixel_makes_a_foreground_cell():
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 1, 1] = 1  # one pixel: its 4x4 cell is foreground
    masks[1, 0, 4:, :] = 0.7
    pooled = pool_masks(masks, (2, 2))
    assert pooled.shape == (2, 1, 2, 2)
    assert pooled[0, 0].tolist() == [[1, 0], [0, 0]]
    assert pooled[1, 0].tolist() == [[0, 0], [1, 1]]
    assert torch.equal(pool_masks(masks[:, 0] * 0.4 + 0.3, (8, 8)), (masks * 0.4 + 0.3 >= 0.5).float())


# -- the ISNet module's variants ------------------------------------------------------------------------
def build(method="isnet", classes=3, **kwargs):
    from isnet.systems.registry import build_system

    settings = {"backbone": "small_cnn", "arch_kwargs": {"width": 4}, "heatmap_warmup_epochs": 0, **kwargs}
    module = build_system(method, classes, **settings)
    module.log_dict = module.log = lambda *a, **k: None  # no trainer attached
    return module


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_each_variant_trains_with_a_finite_loss_and_gradients(variant, deep_supervision):
    torch.manual_seed(0)
    module = build(variant=variant, deep_supervision=deep_supervision).train()
    batch = tiny_batch(n=6, size=32)
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert module.method == ("isnet" if variant == "full" else f"isnet_{variant}")
    rules = ["epsilon", "zplus"] if variant == "dual" else [None]
    levels = ["input", "features.3", "features.7", "features.11"] if deep_supervision else ["input"]
    names = [level if rule is None else f"{rule}/{level}" for rule in rules for level in levels]
    assert module.map_names == names and list(module.natural_ranges) == names  # set from this first batch
    assert module.training_step(batch, 1).isfinite()  # the second step with the foreground loss too


def test_variant_methods_fix_the_variant_and_bad_settings_are_named():
    from isnet.systems.registry import build_system

    for variant in VARIANTS[1:]:
        module = build(f"isnet_{variant}")
        assert module.hparams.variant == variant and module.method == f"isnet_{variant}"
    assert build("isnet", variant="selective", selective_class="highest").hparams.selective_class == "highest"
    with pytest.raises(ValueError, match="unknown ISNet variant 'fast'; choose one of full, selective, stochastic"):
        build(variant="fast")
    with pytest.raises(ValueError, match="selective ISNet explains a softmax probability"):
        build("isnet_selective", multilabel=True)
    with pytest.raises(ValueError, match="selective_class must be one of"):
        build(variant="selective", selective_class="median")
    with pytest.raises(ValueError, match="unknown setting"):
        build_system("isnet_dual", 3, lambda1=1.0)


def test_one_map_per_image_explains_what_the_variant_says():
    """Selective maps equal the engine's heatmaps of d eta / dz of the default (lowest) logit; stochastic and dual
    maps equal the all-class heatmaps at the drawn logit (dual: with each rule)."""
    from isnet import explain
    from isnet.lrp.quantities import selected_class, selective_weights

    torch.manual_seed(0)
    images = tiny_batch(n=4, size=32)["image"]
    selective = build(variant="selective").eval()
    logits, maps, _ = selective._heatmaps(images)
    backbone = selective.backbone
    expected = explain(backbone, images, logit_weights=selective_weights(logits, selected_class(logits, "lowest")))
    torch.testing.assert_close(maps[0], expected)
    dual = build(variant="dual").train()
    state = dual._logit_generator.get_state()
    logits, maps, levels = dual._heatmaps(images)
    drawn = draw_logits(logits, torch.Generator().set_state(state))
    assert levels == ["input", "input"] and all(m.shape == (4, 1, 3, 32, 32) for m in maps)
    for rule, m in zip(("epsilon", "zplus"), maps):
        full = explain(dual.backbone, images, rule=rule)
        torch.testing.assert_close(m, full[torch.arange(4)[:, None], drawn])


def test_dual_loss_has_both_rules_background_losses_and_a_range_per_rule():
    from isnet.loss import ISNetLoss

    torch.manual_seed(0)
    module = build("isnet_dual", P=0.6, background_swap=0).train()
    batch = tiny_batch(n=6, size=32)
    module.training_step(batch, 0)  # sets the ranges (outside a trainer: from the first batch)
    ranges = module.natural_ranges
    assert set(ranges) == {"epsilon/input", "zplus/input"} and ranges["epsilon/input"] != ranges["zplus/input"]
    state = module._logit_generator.get_state()
    parts, logits = module.losses(batch)
    module._logit_generator.set_state(state)
    _, maps, _ = module._heatmaps(module._layout(batch["image"]))
    alone = [ISNetLoss(0.6, module.hparams.d, C1=ranges[name][0], C2=ranges[name][1])(
        logits, batch["label"], m, batch["mask"]) for name, m in zip(module.map_names, maps)]
    torch.testing.assert_close(parts["L1"], (alone[0].background + alone[1].background) / 2)
    torch.testing.assert_close(parts["L2"], (alone[0].foreground + alone[1].foreground) / 2)
    assert float(alone[1].background.detach()) != float(alone[0].background.detach())


def test_deep_supervision_pools_masks_to_each_layer_and_penalises_the_engine_relevance():
    from isnet.loss import ISNetLoss

    torch.manual_seed(0)
    module = build(variant="stochastic", deep_supervision=True, P=0.5, background_swap=0).train()
    batch = tiny_batch(n=4, size=32)
    module.training_step(batch, 0)  # ranges from the first batch
    state = module._logit_generator.get_state()
    parts, logits = module.losses(batch)
    module._logit_generator.set_state(state)
    drawn = draw_logits(logits, torch.Generator().set_state(state))
    out = module.net.explain(module._layout(batch["image"]), drawn, layers=module.layers)
    sizes = {"features.3": 16, "features.7": 8, "features.11": 4}
    assert list(out.layers[0]) == list(sizes)
    maps, masks = [out.heatmaps[0]], [batch["mask"]]
    for name, size in sizes.items():
        assert out.layers[0][name].shape[-2:] == (size, size)
        maps.append(out.layers[0][name])
        masks.append(pool_masks(batch["mask"], (size, size)))
        assert masks[-1].shape == (4, 1, size, size) and masks[-1].sum() > 0
    ranges = [module.natural_ranges[n] for n in module.map_names]
    expected = ISNetLoss(0.5, module.hparams.d)(logits, batch["label"], maps, masks, ranges=ranges)
    torch.testing.assert_close(parts["L1"], expected.background)
    torch.testing.assert_close(parts["L2"], expected.foreground)
    torch.testing.assert_close(parts["loss"], expected.total)


def test_stochastic_draws_are_reproducible_resumable_and_untouched_by_validation():
    import lightning as L

    L.seed_everything(0, verbose=False)
    a = build("isnet_stochastic").train()
    L.seed_everything(0, verbose=False)
    b = build("isnet_stochastic").train()
    logits = torch.randn(50, 3)
    assert torch.equal(draw_logits(logits, a._logit_generator), draw_logits(logits, b._logit_generator))
    checkpoint = {}
    a.on_save_checkpoint(checkpoint)
    a.eval()
    a.validation_step(tiny_batch(n=4, size=32), 3)  # validation draws from its own generator
    after = draw_logits(logits, a._logit_generator)
    L.seed_everything(5, verbose=False)
    resumed = build("isnet_stochastic")
    resumed.on_load_checkpoint(checkpoint)
    assert torch.equal(draw_logits(logits, resumed._logit_generator), after)


def test_ranges_of_every_map_set_are_kept_in_checkpoints():
    torch.manual_seed(0)
    module = build("isnet_dual", deep_supervision=True).train()
    module.training_step(tiny_batch(n=4, size=32), 0)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["isnet_natural_ranges"]) == set(module.map_names)
    reloaded = build("isnet_dual", deep_supervision=True)
    assert not reloaded.range_known
    reloaded.on_load_checkpoint(checkpoint)
    assert reloaded.range_known and reloaded.natural_ranges == module.natural_ranges


def _share_problem(variant, seed):
    """A small float64 ISNet variant without batch norm, four random images with a centred square
    mask, and the background's share of |relevance| in the variant's maps."""
    torch.manual_seed(seed)
    module = build(classes=2, arch_kwargs={"width": 8, "batch_norm": False}, variant=variant).double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    mask = torch.zeros(4, 1, 1, 32, 32, dtype=torch.float64)
    mask[..., 8:24, 8:24] = 1

    def background_share() -> torch.Tensor:
        _, maps, _ = module._heatmaps(x)
        return sum(((m.abs() * (1 - mask)).sum() / m.abs().sum()) for m in maps) / len(maps)

    return module, background_share


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_training_steps_move_each_variants_relevance_out_of_the_background(variant):
    """As tests/test_model.py shows for the full ISNet: gradient descent on the variant's maps (in float64,
    SGD far from chaotic, several seeds) lowers the background's share; the shares are measured in eval
    mode, where the random variants draw the same logits before and after."""
    ratios = []
    for seed in range(4):
        module, share = _share_problem(variant, seed)
        optimiser = torch.optim.SGD(module.parameters(), lr=0.03)
        module.eval()
        start = share().item()
        module.train()
        for _ in range(30):
            loss = share()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        module.eval()
        end = share().item()
        assert end < start, f"seed {seed}: share {start:.3f} -> {end:.3f}"
        ratios.append(end / start)
    assert sum(ratios) / len(ratios) < 0.9, ratios  # (z+ maps, all positive, move slowest: 0.87 for dual)


def test_ranges_estimated_before_training_come_from_every_map_set_and_leave_the_draws_alone():
    from isnet.loss import foreground_moments, natural_range_from_moments

    torch.manual_seed(0)
    module = build("isnet_dual", deep_supervision=True).train()
    batches = [tiny_batch(n=4, size=32, seed=s) for s in range(3)]
    state = module._logit_generator.get_state()
    ranges = module.estimate_natural_ranges(batches, batches=2)
    assert module.training and module.range_known and list(ranges) == module.map_names
    assert torch.equal(module._logit_generator.get_state(), state)
    module.eval()
    stats = 0
    for i, batch in enumerate(batches[:2]):  # what it measured: the validation draws of batches 0 and 1
        module._validation_batch = i
        _, maps, levels = module._heatmaps(batch["image"])
        stats = stats + torch.stack([foreground_moments(m, batch["mask"] if level == "input" else pool_masks(
            batch["mask"], m.shape[-2:])) for m, level in zip(maps, levels)])
    n, total, squares = stats[1].tolist()
    mean = total / n
    expected = natural_range_from_moments(mean, ((squares - n * mean**2) / (n - 1)) ** 0.5, n)
    assert ranges[module.map_names[1]] == pytest.approx(expected)
