"""The built-in radiograph benchmark: determinism, manifest, anatomy, lesions, source traits, loading."""

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from isnet.data import (Augmentation, ManifestError, MaskedImageDataModule, MaskedImageDataset, Preprocessing,
                        read_manifest, validate)  # fmt: skip
from isnet.data.radiographs import (CLASSES, EXTERNAL_SOURCES, SOURCES, TRAINING_SOURCES, VARIANTS,
                                    generate_radiographs, render_radiograph)  # fmt: skip

PER_CLASS = (12, 4, 6, 6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_radiographs(tmp_path_factory.mktemp("radiographs"), per_class=PER_CLASS, size=64, seed=0)


def manifest_records(root):
    with (root / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def load(path):
    return np.asarray(Image.open(path))


def test_generation_is_deterministic_and_reused(dataset, tmp_path):
    again = generate_radiographs(tmp_path / "again", per_class=PER_CLASS, size=64, seed=0)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((dataset / f).read_bytes() == (again / f).read_bytes() for f in files)

    other = generate_radiographs(tmp_path / "other", per_class=PER_CLASS, size=64, seed=1)
    images = [r["image"] for r in manifest_records(dataset)]
    assert sum(not np.array_equal(load(dataset / f), load(other / f)) for f in images) == len(images)

    stamp = (again / "manifest.csv").stat().st_mtime_ns
    assert generate_radiographs(again, per_class=PER_CLASS, size=64, seed=0) == again
    assert (again / "manifest.csv").stat().st_mtime_ns == stamp


def test_manifest_validates_and_loads(dataset):
    rows = read_manifest(dataset)
    assert len(rows) == len(CLASSES) * sum(PER_CLASS)
    validate(rows, CLASSES, splits=("train", "val", "test", "external"), need_masks=("train", "val"), multilabel=False)
    assert all((row.lesion is None) == (row.labels == ("normal",)) for row in rows)
    assert list(manifest_records(dataset)[0]) == ["image", "mask", "label", "split", "lesion", "source"]

    dm = MaskedImageDataModule(dataset, size=64, grayscale=True, augment=False, batch_size=4)
    dm.setup()
    assert dm.classes == sorted(CLASSES)
    assert set(dm.test_sets) == {"test", "external"}
    assert [len(dm.train_set), len(dm.val_set)] == [3 * PER_CLASS[0], 3 * PER_CLASS[1]]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["lesion"].shape == (4, 1, 64, 64)
    item = dm.test_sets["external"][0]
    assert set(item) == {"image", "mask", "label", "index", "lesion"}


def test_lung_masks_are_two_plausible_regions(dataset):
    for record in manifest_records(dataset):
        lungs = load(dataset / record["mask"]) > 0
        assert 0.15 <= lungs.mean() <= 0.5, record["mask"]
        assert ndimage.label(lungs)[1] == 2, record["mask"]
        left, right = lungs[:, :32].sum(), lungs[:, 32:].sum()
        assert 0.5 < left / right < 2.0


@pytest.mark.parametrize("source", list(SOURCES))
def test_classes_differ_only_inside_the_lungs(source):
    for seed in range(4):
        normal = render_radiograph("normal", source, seed=seed)
        assert not normal.lesion.any()
        for label in ("opacity", "ground_glass"):
            sick = render_radiograph(label, source, seed=seed)
            assert np.array_equal(sick.lungs, normal.lungs)
            changed = sick.image != normal.image
            assert not changed[~normal.lungs].any()
            assert changed[normal.lungs].mean() > 0.05
            assert sick.lesion.any() and not sick.lesion[~sick.lungs].any()


def test_sources_differ_only_outside_the_lungs():
    """Default variant: the same case from two sources is equal inside the lung mask, different outside it."""
    for seed in range(3):
        for label in CLASSES:
            a = render_radiograph(label, "A", seed=seed)
            assert np.array_equal(a.image, render_radiograph(label, "A", seed=seed, variant="background").image)
            for source in ("B", "C", "D", "E"):
                other = render_radiograph(label, source, seed=seed)
                assert np.array_equal(other.lungs, a.lungs) and np.array_equal(other.lesion, a.lesion)
                assert np.array_equal(other.image[a.lungs], a.image[a.lungs])
                assert (other.image[~a.lungs] != a.image[~a.lungs]).mean() > 0.5


def test_in_lung_variant_changes_the_lungs_too():
    for seed in range(3):
        for label in CLASSES:
            a = render_radiograph(label, "A", seed=seed, variant="in-lung")
            plain = render_radiograph(label, "A", seed=seed)
            # Away from the lungs (past the traits' two-pixel ramp) the variant changes nothing.
            far = ndimage.distance_transform_edt(~a.lungs) >= 2
            assert np.array_equal(a.image[far], plain.image[far])
            assert np.array_equal(a.lungs, plain.lungs) and np.array_equal(a.lesion, plain.lesion)
            # The class evidence still lies only inside the lungs.
            normal = render_radiograph("normal", "A", seed=seed, variant="in-lung")
            assert np.array_equal(a.image[~a.lungs], normal.image[~a.lungs])
            for source in ("B", "C", "D", "E"):
                other = render_radiograph(label, source, seed=seed, variant="in-lung")
                assert np.array_equal(other.lungs, a.lungs)
                assert (other.image[a.lungs] != a.image[a.lungs]).mean() > 0.5
                assert (other.image[~a.lungs] != a.image[~a.lungs]).mean() > 0.5


def test_in_lung_variant_source_traits_are_global_contrast_and_noise():
    """In-lung pixels follow the source's tone curve: mean lung grey level per source, over the same patients."""
    seeds = range(6)

    def lung_mean(source, variant):
        samples = [render_radiograph("normal", source, seed=s, variant=variant) for s in seeds]
        return np.mean([r.image[r.lungs].mean() for r in samples])

    plain = {s: lung_mean(s, "background") for s in SOURCES}
    assert max(plain.values()) == min(plain.values())
    toned = {s: lung_mean(s, "in-lung") for s in SOURCES}
    assert max(toned.values()) - min(toned.values()) > 5  # grey levels of 0-255


def test_unknown_variant_is_named(tmp_path):
    message = r"unknown radiograph variant 'inlung'; choose from \['background', 'in-lung'\]"
    with pytest.raises(ValueError, match=message):
        render_radiograph("normal", "A", variant="inlung")
    with pytest.raises(ValueError, match=r"unknown radiograph variant 'lungs'"):
        generate_radiographs(tmp_path, per_class=(1, 1, 1, 1), variant="lungs")
    assert not (tmp_path / "manifest.csv").exists()


def test_variant_is_part_of_the_settings(dataset, tmp_path):
    root = tmp_path / "in-lung"
    shutil.copytree(dataset, root)
    generate_radiographs(root, per_class=PER_CLASS, size=64, seed=0, variant="in-lung")
    assert '"variant": "in-lung"' in (root / "settings.json").read_text()
    records = manifest_records(root)
    assert records == manifest_records(dataset)  # same cases, sources and masks
    image, mask = records[0]["image"], records[0]["mask"]
    assert np.array_equal(load(root / mask), load(dataset / mask))
    lungs = load(root / mask) > 0
    assert not np.array_equal(load(root / image)[lungs], load(dataset / image)[lungs])
    assert VARIANTS[0] == "background"  # the default of render_radiograph and generate_radiographs


def test_lesion_masks_inside_the_lungs(dataset):
    for record in manifest_records(dataset):
        if record["label"] == "normal":
            assert record["lesion"] == ""
            continue
        lesion, lungs = load(dataset / record["lesion"]) > 0, load(dataset / record["mask"]) > 0
        assert lesion.any() and not (lesion & ~lungs).any(), record["lesion"]
        assert lesion.sum() < lungs.sum()


def test_background_traits_differ_between_sources():
    """Mean images of two disjoint groups of patients: close within a source, far apart between sources."""
    def mean_image(source, seeds):
        return np.mean([render_radiograph("normal", source, seed=s).image.astype(float) for s in seeds], axis=0)

    first = {s: mean_image(s, range(8)) for s in SOURCES}
    second = {s: mean_image(s, range(8, 16)) for s in SOURCES}
    within = max(np.abs(first[s] - second[s]).mean() for s in SOURCES)
    between = min(np.abs(first[s] - second[t]).mean() for s in SOURCES for t in SOURCES if s != t)
    assert between > 2 * within


def test_split_sources_and_class_association(dataset):
    records = manifest_records(dataset)
    external = [r for r in records if r["split"] == "external"]
    assert {r["source"] for r in external} == set(EXTERNAL_SOURCES)
    for label in CLASSES:
        mine = [r["source"] for r in external if r["label"] == label]
        assert len(mine) == PER_CLASS[3] and mine.count("D") == mine.count("E")
    assert {r["source"] for r in records if r["split"] != "external"} == set(TRAINING_SOURCES)
    for k, label in enumerate(CLASSES):
        train = [r["source"] for r in records if r["split"] == "train" and r["label"] == label]
        assert train.count(TRAINING_SOURCES[k]) / len(train) >= 0.7


def test_lesion_is_augmented_with_the_mask(dataset):
    rows = [r for r in read_manifest(dataset) if r.split == "train" and r.lesion is not None][:4]
    prep = Preprocessing(size=64, grayscale=True)
    plain = MaskedImageDataset(rows, CLASSES, prep)
    flipping = MaskedImageDataset(rows, CLASSES, prep, augmentation=Augmentation(translate=0, rotate=0, flip=True))
    flipped = 0
    for i in range(len(rows)):
        base, item = plain[i], flipping[i]
        assert item["lesion"].shape == (1, 64, 64) and item["lesion"].any()
        was_flipped = torch.equal(item["mask"], base["mask"].flip(-1)) and not torch.equal(item["mask"], base["mask"])
        expected = base["lesion"].flip(-1) if was_flipped else base["lesion"]
        assert torch.equal(item["lesion"], expected)
        flipped += was_flipped
    assert 0 < flipped < len(rows)  # with seed 0 (conftest), both outcomes occur

    image, mask, lesion = plain[0]["image"], plain[0]["mask"], plain[0]["lesion"]
    aug = Augmentation(translate=0.2, rotate=30, flip=True)
    _, moved_mask, moved_lesion = aug.apply(image, mask, lesion, generator=torch.Generator().manual_seed(5))
    assert torch.equal(moved_lesion, aug(image, lesion, torch.Generator().manual_seed(5))[1])
    assert torch.equal(moved_mask, aug(image, mask, torch.Generator().manual_seed(5))[1])


def test_items_without_a_lesion_column_keep_their_keys(dataset, tmp_path):
    root = tmp_path / "plain"
    shutil.copytree(dataset, root)
    records = manifest_records(root)
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "label", "split", "source"])
        writer.writerows([r["image"], r["mask"], r["label"], r["split"], r["source"]] for r in records)
    dm = MaskedImageDataModule(root, size=32, grayscale=True, augment=True)
    dm.setup()
    assert set(dm.train_set[0]) == {"image", "mask", "label", "index"}


def test_mismatched_lesion_mask_names_the_row(dataset, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(dataset, root)
    records = manifest_records(root)
    line, record = next((n, r) for n, r in enumerate(records, start=2) if r["lesion"])
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / record["lesion"])
    with pytest.raises(ManifestError, match=rf"line {line}: lesion mask .* is 5x5 but image .* is 64x64"):
        MaskedImageDataModule(root, size=32).setup()
    (root / record["lesion"]).unlink()
    with pytest.raises(ManifestError, match=rf"line {line}: lesion mask .* does not exist"):
        MaskedImageDataModule(root, size=32).setup()
