"""Embedded datasets (deterministic, with masks) and CIFAR-10 from test-made files."""

import dataclasses
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torch

from iavutils.world import data
from iavutils.world.data import EMBEDDED_CLASSES, DatasetNotFoundError, get_dataset
from iavutils.world.models import PRESETS


def test_embedded_is_deterministic_and_well_formed():
    ds = get_dataset("embedded", "val")
    images, labels, masks = data.generate.__wrapped__("embedded", "val", 0)  # uncached, fresh draw
    assert torch.equal(images, ds.images) and torch.equal(labels, ds.labels) and torch.equal(masks, ds.masks)
    assert images.dtype == torch.uint8 and images.shape == (1000, 3, 32, 32)
    assert torch.bincount(labels).tolist() == [100] * 10 and ds.classes == EMBEDDED_CLASSES
    area = masks.float().mean(dim=(1, 2))
    assert (area > 0.02).all() and (area < 0.7).all()  # every image has an object, never the whole frame
    other = data.generate.__wrapped__("embedded", "val", 1)[0]
    assert not torch.equal(other, images)


def test_splits_and_sources_differ():
    tr, va, te = (get_dataset("embedded", s) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (5000, 1000, 1000)
    assert not torch.equal(tr.images[:1000], va.images) and not torch.equal(va.images, te.images)
    small = get_dataset("source-small", "val")
    spec_small, spec_large = data.DATASETS["source-small"], data.DATASETS["source-large"]
    assert spec_small.num_classes < spec_large.num_classes
    assert spec_small.splits["train"] < spec_large.splits["train"]
    assert small.num_classes == 20 and small.classes != EMBEDDED_CLASSES
    assert small.masks.any(dim=(1, 2)).all()
    with pytest.raises(ValueError):
        get_dataset("source-small", "test")


def test_items_are_normalised_and_resized_for_the_model():
    info = PRESETS["tiny-dino"]
    ds = get_dataset("embedded", "test", info=info)
    x, y, mask = ds[3]
    assert x.shape == (3, 32, 32) and mask.shape == (32, 32) and isinstance(y, int)
    assert torch.allclose(info.denormalize(x), ds.pixels([3])[0], atol=1e-6)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    big = get_dataset("embedded", "test", info=PRESETS["deit"])
    xb, yb, mb = big[3]
    assert xb.shape == (3, 224, 224) and mb.shape == (224, 224) and yb == y
    assert torch.allclose(PRESETS["deit"].denormalize(xb).mean(), ds.pixels([3]).mean(), atol=0.02)
    xs, ys, ms = big.get_batch([1, 3])
    assert torch.allclose(xs[1], xb) and torch.equal(ms[1], mb)


def test_object_location_matters():
    # the object differs from its surroundings: pixels inside the mask are not background-like
    ds = get_dataset("embedded", "val")
    x = ds.pixels(slice(0, 200))
    m = ds.masks[:200, None].float()
    inside = (x * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3))
    outside = (x * (1 - m)).sum(dim=(2, 3)) / (1 - m).sum(dim=(2, 3))
    assert (inside - outside).abs().sum(1).mean() > 0.2
    # objects are not always in the same place
    cy = (ds.masks.float().sum(2) * torch.arange(32)).sum(1) / ds.masks.float().sum((1, 2))
    assert cy.std() > 3


# ---- CIFAR-10 in its real python format, written by the test ---------------------------------


def _write_cifar(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        arr = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        entry = {"batch_label": f"{name} of 6", "labels": labels, "data": arr,
                 "filenames": [f"img_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        arrays[name] = (arr, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(data.CIFAR10_CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return arrays


def test_cifar10_from_test_made_files(tmp_path):
    arrays = _write_cifar(tmp_path)
    info = PRESETS["tiny-sup"]
    train = get_dataset("cifar10", "train", info=info, root=tmp_path)
    test = get_dataset("cifar10", "test", info=info, root=tmp_path)
    assert len(train) == 20 and len(test) == 4 and train.num_classes == 10
    # the first training image, decoded from the format (R plane, G plane, B plane, row-major)
    arr, labels = arrays["data_batch_1"]
    expected = torch.from_numpy(arr[1].reshape(3, 32, 32).astype(np.float32) / 255)
    x, y = train[1]
    assert y == labels[1]
    assert torch.allclose(info.denormalize(x), expected, atol=1e-6)
    x, y = test[2]
    assert y == arrays["test_batch"][1][2]
    # the paper's preprocessing for hub models: resize to 224, the preset's mean/std
    big = get_dataset("cifar10", "train", info=PRESETS["deit"], root=tmp_path)
    xb, _ = big[1]
    assert xb.shape == (3, 224, 224)
    assert torch.allclose(PRESETS["deit"].denormalize(xb).mean(), expected.mean(), atol=0.02)


def test_cifar10_archive_is_extracted(tmp_path):
    src = tmp_path / "src"
    _write_cifar(src)
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert len(get_dataset("cifar10", "test", root=root)) == 4


def test_cifar10_missing_offline_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("cifar10", "train", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg and str(tmp_path / "cifar-10-batches-py") in msg

    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz") as err:
        get_dataset("cifar10", "train", root=tmp_path, download=True)
    assert not isinstance(err.value, urllib.error.URLError)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("imagenet")
