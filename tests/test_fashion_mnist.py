"""Fashion-MNIST: the IDX reader, the splits, the masks and the missing-data message.

Files in the original IDX format are written by the tests (gzipped and not); the Debian package's
real files are checked too where the set-up installed them.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from iavutils.world import fashion_mnist as fm
from iavutils.world.data import get_dataset
from iavutils.world.models import PRESETS


def _idx(kind: str, data: np.ndarray) -> bytes:
    magic = 2051 if kind == "images" else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    return header + data.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_train: int = 50, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict:
    """Miniature Fashion-MNIST in the original format: a bright square garment on black."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            r, c = rng.integers(2, 14, size=2)
            imgs[i, r:r + 10, c:c + 10] = rng.integers(40, 256)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for kind, arr, stem in (("images", imgs, f"{split}-images-idx3-ubyte"), ("labels", labels, f"{split}-labels-idx1-ubyte")):
            raw = _idx(kind, arr)
            (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)
        out[split] = (imgs, labels)
    return out


@pytest.fixture(autouse=True)
def _no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Tests see only the files they write (the real package is tested separately).
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.delenv("IAV_DOWNLOAD", raising=False)
    fm._load_split.cache_clear()


@pytest.mark.parametrize("gz", [True, False])
def test_splits_masks_and_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool) -> None:
    truth = write_fashion_mnist(tmp_path / "data" / "fashion-mnist", gz=gz)
    monkeypatch.setenv("IAV_DATA", str(tmp_path / "data"))
    test = get_dataset("fashion-mnist", "test")
    train, val = get_dataset("fashion-mnist", "train"), get_dataset("fashion-mnist", "val")
    assert (len(train), len(val), len(test)) == (40, 10, 20)  # a fifth of a small train file held out
    # test = the official file, in order
    assert torch.equal(test.labels, torch.from_numpy(truth["t10k"][1].astype(np.int64)))
    # train and val partition the official train file, the same way every time
    all_train = torch.from_numpy(truth["train"][0])
    rows = lambda ds: {bytes(im.numpy().tobytes()) for im in ds.images}  # noqa: E731
    assert rows(train) | rows(val) == {bytes(im.numpy().tobytes()) for im in all_train}
    assert torch.equal(get_dataset("fashion-mnist", "val").images, val.images)
    x, y, mask = test.get_batch([0, 1])
    assert x.shape == (2, 3, 28, 28) and mask.shape == (2, 28, 28)
    assert torch.allclose(x[:, 0], x[:, 1]) and torch.allclose(x.min(), torch.tensor(-1.0))
    expected = torch.from_numpy(truth["t10k"][0][:2] > 255 * fm.MASK_THRESHOLD).float()
    assert torch.equal(mask, expected) and mask.sum() == 2 * 100


def test_resized_to_the_model_with_its_normalisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw")  # torchvision's layout
    info = PRESETS["deit"]
    x, y, mask = fm.FashionMNISTDataset("test", info=info, root=tmp_path).get_batch(slice(0, 3))
    assert x.shape == (3, 3, 224, 224) and mask.shape == (3, 224, 224)
    black = (0 - torch.tensor(info.mean)) / torch.tensor(info.std)
    assert torch.allclose(x[:, :, 0, 0], black.expand(3, 3), atol=1e-5)
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_missing_data_names_the_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IAV_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("fashion-mnist", "train")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "IAV_DOWNLOAD=1" in msg and "download=True" in msg
    assert "$IAV_DATA/fashion-mnist/" in msg and str(tmp_path / "empty" / "fashion-mnist") in msg


def test_download_is_asked_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            if len(calls) == 1:
                write_fashion_mnist(Path(root) / "FashionMNIST" / "raw")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    monkeypatch.setenv("IAV_DATA", str(tmp_path))
    monkeypatch.setenv("IAV_DOWNLOAD", "1")
    assert len(fm.FashionMNISTDataset("test")) == 20
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]


def test_broken_files_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    write_fashion_mnist(folder, gz=False)
    img = folder / "t10k-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: .*truncated"):
        fm.FashionMNISTDataset("test", root=tmp_path)
    lab = folder / "train-labels-idx1-ubyte"
    lab.write_bytes(b"\x00\x00\x08\x03" + lab.read_bytes()[4:])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: IDX magic 2051, expected 2049"):
        fm.FashionMNISTDataset("train", root=tmp_path)


def test_bad_split_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"split must be 'train', 'val' or 'test', not 'dev'"):
        fm.FashionMNISTDataset("dev", root=tmp_path)


@pytest.mark.skipif(not (Path("/usr/share/datasets/fashion-mnist") / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (make install does it as root)")
def test_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fm, "DEBIAN_DIR", Path("/usr/share/datasets/fashion-mnist"))
    monkeypatch.setenv("IAV_DATA", str(tmp_path))
    test = get_dataset("fashion-mnist", "test")
    assert len(test) == 10_000 and test.labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert torch.equal(test.labels.bincount(), torch.full((10,), 1000))
    assert (len(get_dataset("fashion-mnist", "train")), len(get_dataset("fashion-mnist", "val"))) == (55_000, 5_000)
    # the background is black: the mask covers the garment, not the frame
    _, _, mask = test.get_batch(slice(0, 200))
    frac = mask.mean((1, 2))
    assert 0.1 < float(frac.mean()) < 0.8 and float(mask[:, 0, 0].max()) == 0.0
