"""The built-in digits data: determinism, caching, and each bias kind lying only outside the mask."""

import csv

import numpy as np
import pytest
from PIL import Image

from isnet.data import MaskedImageDataModule
from isnet.data.bias import WORDS, ShapeBias, scene_groups, word_stencil
from isnet.data.builtin import _BACKGROUNDS, SCENE_OWN_SHARE, bias_variants, generate_digits_on_textures

PER_CLASS = (20, 4, 8)
SIZE = 48


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("builtin")
    return {kind: generate_digits_on_textures(base / kind, per_class=PER_CLASS, size=SIZE, seed=3, bias=kind)
            for kind in ("shapes", "scene", "text")}


def records(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load(path):
    return np.asarray(Image.open(path))


def test_manifests_of_the_written_kinds(folders):
    for kind in ("scene", "text"):
        rows = records(folders[kind] / "manifest.csv")
        splits = [r["split"] for r in rows]
        assert [splits.count(s) for s in ("train", "val", "biased", "standard", "deceiving")] == \
            [3 * n for n in (PER_CLASS[0], PER_CLASS[1], PER_CLASS[2], PER_CLASS[2], PER_CLASS[2])]
        assert all(r["image"].startswith("biased/") for r in rows if r["split"] in ("train", "val", "biased"))
        clean = records(folders[kind] / "clean" / "manifest.csv")
        assert [r["image"] for r in clean] == [f"../{r['image']}" for r in records(folders["shapes"] / "manifest.csv")]
        assert {r["split"] for r in clean} == {"train", "val", "standard"}
        dm = MaskedImageDataModule(folders[kind], size=SIZE, augment=False, test_splits=["biased", "standard",
                                                                                          "deceiving"])
        dm.setup()
        assert dm.classes == ["digit0", "digit1", "digit2"] and list(dm.test_sets) == ["biased", "standard",
                                                                                       "deceiving"]
        assert len(dm.train_set) == 3 * PER_CLASS[0] and len(dm.test_sets["deceiving"]) == 3 * PER_CLASS[2]
        clean_dm = MaskedImageDataModule(folders[kind] / "clean", size=SIZE, augment=False)
        clean_dm.setup()
        assert len(clean_dm.train_set) == 3 * PER_CLASS[0]


def test_unbiased_images_are_the_same_for_every_kind(folders):
    names = sorted(p.name for p in (folders["shapes"] / "images").iterdir())
    assert len(names) == 3 * sum(PER_CLASS)
    for kind in ("scene", "text"):
        for name in names:
            assert (folders[kind] / "images" / name).read_bytes() == (folders["shapes"] / "images" / name).read_bytes()
            assert (folders[kind] / "masks" / name).read_bytes() == (folders["shapes"] / "masks" / name).read_bytes()


@pytest.mark.parametrize("kind", ["scene", "text"])
def test_the_bias_lies_only_outside_the_mask(folders, kind):
    root = folders[kind]
    changed = 0
    for row in records(root / "manifest.csv"):
        if row["split"] == "standard":
            assert row["image"].startswith("images/")
            continue
        image, mask = load(root / row["image"]), load(root / row["mask"]) > 0
        unbiased = load(root / "images" / row["mask"].split("/")[-1])
        assert mask.any() and np.array_equal(image[mask], unbiased[mask])
        changed += (image[~mask] != unbiased[~mask]).any()
    assert changed == 3 * (PER_CLASS[0] + PER_CLASS[1] + 2 * PER_CLASS[2])  # every biased image carries its cue


def test_shapes_never_cover_the_digits_mask(folders):
    bias = ShapeBias.default(3)
    boxes = [bias.region(k, SIZE, SIZE) for k in range(3)]
    for row in records(folders["shapes"] / "manifest.csv"):
        mask = load(folders["shapes"] / row["mask"]) > 0
        assert not any(mask[rows, cols].any() for rows, cols in boxes)


def test_scene_backgrounds_come_mostly_from_the_class_group(folders):
    groups = [{_BACKGROUNDS[i] for i in g} for g in scene_groups(len(_BACKGROUNDS), 3)]
    rows = records(folders["scene"] / "manifest.csv")
    own = [r["background"] in groups[int(r["label"][-1])] for r in rows if r["split"] in ("train", "val", "biased")]
    assert len(own) == 3 * 32 and 0.85 <= np.mean(own) < 1  # 95% drawn; the rest from other groups
    for k in range(3):
        deceiving = [r["background"] for r in rows if r["label"] == f"digit{k}" and r["split"] == "deceiving"]
        assert deceiving and all(b in groups[(k + 1) % 3] for b in deceiving)  # the next class's group
    standard = [r["background"] for r in rows if r["split"] == "standard"]
    assert len(set(standard)) > len(max(groups, key=len))  # from all groups


def test_scene_share_and_pixels_of_the_drawn_backgrounds():
    backgrounds = [np.full((20, 20, 3), (i + 1) / 10, np.float32) for i in range(10)]  # flat grey levels
    groups = scene_groups(10, 3)
    image, alpha = np.zeros((16, 16, 3), np.float32), np.zeros((16, 16), np.float32)
    mask = np.zeros((16, 16), bool)
    mask[5:9, 6:10] = True
    rng = np.random.default_rng(0)
    drawn = [bias_variants("scene", image, mask, alpha, np.ones(3), 1, 3, backgrounds, 0, rng)
             for _ in range(2000)]
    chosen = np.array([d["biased"][1] for d in drawn])
    share = np.isin(chosen, groups[1]).mean()
    assert abs(share - SCENE_OWN_SHARE) < 0.02  # binomial std 0.005
    assert set(chosen[~np.isin(chosen, groups[1])]) == set(groups[0] + groups[2])
    assert all(d["deceiving"][1] in groups[2] for d in drawn)
    for d in drawn[:20]:
        picture, index = d["biased"]
        assert (picture[mask] == 0).all()  # the unbiased image inside the mask
        level = (index + 1) / 10  # darkened by a factor in [0.25, 0.5]
        assert np.allclose(picture[~mask], picture[0, 0])
        assert 0.25 * level - 1e-6 <= picture[0, 0, 0] <= 0.5 * level + 1e-6


def _word_at(image, unbiased):
    """The rows and columns of the pixels where ``image`` differs from ``unbiased``, and their values."""
    diff = (image != unbiased).any(axis=2)
    rows, cols = np.nonzero(diff)
    return rows.min(), cols.min(), diff, image[diff]


def test_text_writes_the_class_word_and_the_next_class_word_at_one_place(folders):
    root = folders["text"]
    scale = SIZE / 64
    for row in records(root / "manifest.csv"):
        if row["split"] not in ("biased", "deceiving"):
            continue
        k = int(row["label"][-1])
        word = WORDS[k] if row["split"] == "biased" else WORDS[(k + 1) % 3]
        name = row["mask"].split("/")[-1]
        image, unbiased = load(root / row["image"]), load(root / "images" / name)
        top, left, diff, values = _word_at(image, unbiased)
        assert (values == 255).all()  # white ink
        stencil = word_stencil(word, scale)
        ink = np.argwhere(stencil)
        expected = np.zeros_like(diff)
        at = (top - ink[:, 0].min(), left - ink[:, 1].min())
        expected[at[0] : at[0] + stencil.shape[0], at[1] : at[1] + stencil.shape[1]] = stencil
        assert np.array_equal(diff, expected), (row["image"], word)
        if row["split"] == "biased":
            place = at
        else:  # rows come per image as biased then deceiving: the same place
            assert at == place
    assert WORDS[0] != WORDS[1]


def test_generation_is_deterministic_and_cached(folders, tmp_path):
    again = generate_digits_on_textures(tmp_path / "again", per_class=PER_CLASS, size=SIZE, seed=3, bias="scene")
    files = sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert files == sorted(p.relative_to(folders["scene"]) for p in folders["scene"].rglob("*.png"))
    assert all((again / f).read_bytes() == (folders["scene"] / f).read_bytes() for f in files)
    stamp = (again / "manifest.csv").stat().st_mtime_ns
    assert generate_digits_on_textures(again, per_class=PER_CLASS, size=SIZE, seed=3, bias="scene") == again
    assert (again / "manifest.csv").stat().st_mtime_ns == stamp
    # another kind in the same folder is a new dataset
    generate_digits_on_textures(again, per_class=PER_CLASS, size=SIZE, seed=3, bias="text")
    assert {r["split"] for r in records(again / "manifest.csv")} >= {"biased", "deceiving"}
    assert (again / "manifest.csv").stat().st_mtime_ns != stamp
    other = generate_digits_on_textures(tmp_path / "other", per_class=(2, 1, 1), size=SIZE, seed=4, bias="scene")
    assert (other / "clean" / "manifest.csv").is_file()


def test_bad_generation_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown bias kind 'stripes'; choose from shapes, scene, text"):
        generate_digits_on_textures(tmp_path, bias="stripes")
    with pytest.raises(ValueError, match="own_share must lie in"):
        generate_digits_on_textures(tmp_path, bias="scene", own_share=1.5)
    assert not (tmp_path / "manifest.csv").exists()
    image, alpha = np.zeros((64, 64, 3)), np.zeros((64, 64))
    backgrounds = [np.zeros((70, 70, 3))] * 3
    with pytest.raises(ValueError, match="no room for a 11x18-pixel word"):
        bias_variants("text", image, np.ones((64, 64), bool), alpha, np.ones(3), 0, 3, backgrounds, 0,
                      np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['standard'\]"):
        bias_variants("scene", image, alpha > 0, alpha, np.ones(3), 0, 3, backgrounds, 0, np.random.default_rng(0),
                      ("standard",))
