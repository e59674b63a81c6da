"""CIFAR-10 files are read with a restricted unpickler; IAV_DOWNLOAD reaches the download.

The test files are miniature batches in the official python format (dicts of uint8 arrays and
lists of ints), so the official md5 sums cannot be the defence: the reader itself must refuse
anything but that structure.
"""

import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from iavutils.world import cifar
from iavutils.world.data import CIFAR10_CLASSES, DatasetFormatError, DatasetNotFoundError, get_dataset

FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(root, per_batch=3, protocol=2, bytes_keys=False):
    """Official-format files under ``root/cifar-10-batches-py``; returns the test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    batches = {}
    for name in FILES:
        arr = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        entry = {key("batch_label"): f"{name}", key("labels"): labels, key("data"): arr,
                 key("filenames"): [f"img_{i}.png" for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
        batches[name] = (arr, labels)
    names = [c.encode() for c in CIFAR10_CLASSES] if bytes_keys else list(CIFAR10_CLASSES)
    meta = {key("label_names"): names, key("num_cases_per_batch"): per_batch, key("num_vis"): 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Open:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("bytes_keys", [False, True])
def test_official_format_files_load(tmp_path, protocol, bytes_keys):
    batches = write_cifar(tmp_path, protocol=protocol, bytes_keys=bytes_keys)
    test = get_dataset("cifar10", "test", root=tmp_path, download=False)
    arr, labels = batches["test_batch"]
    assert len(test) == 3 and test.labels.tolist() == labels
    assert torch.equal(test.data, torch.from_numpy(arr.reshape(-1, 3, 32, 32)))
    assert len(get_dataset("cifar10", "train", root=tmp_path, download=False)) == 15


def test_crafted_meta_does_not_run_code(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned_meta"
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": _System(f"touch {marker}")}, protocol=2))
    with pytest.raises(DatasetFormatError) as err:
        get_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()
    msg = str(err.value)
    assert str(meta) in msg and "system" in msg and "not an official CIFAR-10 file" in msg and "official archive" in msg


@pytest.mark.parametrize("protocol", [2, 5])
def test_crafted_batch_does_not_run_code(tmp_path, protocol):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned_batch"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    payload = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "batch_label": _Open(str(marker))}
    batch.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(DatasetFormatError, match="data_batch_3") as err:
        get_dataset("cifar10", "train", root=tmp_path)
    assert not marker.exists()
    assert "builtins.open" in str(err.value) or "io.open" in str(err.value)
    # the test split does not read that file, and still loads
    assert len(get_dataset("cifar10", "test", root=tmp_path)) == 3


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, r"uint8 array \[N, 3072\]"),
        ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, r"uint8 array \[N, 3072\]"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, r"labels must be in 0\.\.9"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "2 images but 1 labels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0.0, 1.0]}, "list of ints"),
        ({"data": np.zeros((2, 3072), np.uint8)}, "no \\['labels'\\] entry"),
        ([1, 2, 3], "holds a list, not a dict"),
    ],
)
def test_wrong_structure_is_named(tmp_path, entry, expected):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DatasetFormatError, match=expected) as err:
        get_dataset("cifar10", "test", root=tmp_path)
    assert str(path) in str(err.value)


def test_truncated_batch_is_named(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetFormatError, match="may be truncated") as err:
        get_dataset("cifar10", "test", root=tmp_path)
    assert str(path) in str(err.value)


def test_archive_extraction_stays_inside_root(tmp_path):
    src = tmp_path / "src"
    write_cifar(src)
    root = tmp_path / "root"
    root.mkdir()
    evil = tmp_path / "evil.txt"
    evil_src = src / "evil.txt"
    evil_src.write_text("x")
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        tar.add(evil_src, arcname="../evil.txt")
        tar.add(evil_src, arcname="cifar-10-batches-py/../../evil.txt")
    assert len(get_dataset("cifar10", "test", root=root)) == 3
    assert not evil.exists()


# ---- IAV_DOWNLOAD and the missing-data message ------------------------------------------------


@pytest.fixture
def fake_download(monkeypatch):
    calls = []

    def download(root):
        calls.append(root)
        write_cifar(root)

    monkeypatch.setattr(cifar, "_download_cifar", download)
    return calls


def test_iav_download_env_reaches_the_download(tmp_path, monkeypatch, fake_download):
    monkeypatch.setenv("IAV_DOWNLOAD", "1")
    ds = get_dataset("cifar10", "test", root=tmp_path)  # download not given: from the environment
    assert fake_download == [tmp_path] and len(ds) == 3
    # an explicit download=False wins over the environment
    monkeypatch.setenv("IAV_DOWNLOAD", "1")
    with pytest.raises(DatasetNotFoundError):
        get_dataset("cifar10", "test", root=tmp_path / "other", download=False)
    assert len(fake_download) == 1


def test_iav_data_env_is_the_default_root(tmp_path, monkeypatch, fake_download):
    monkeypatch.setenv("IAV_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("IAV_DOWNLOAD", "yes")
    assert len(get_dataset("cifar10", "test")) == 3
    assert fake_download == [tmp_path / "data"]


def test_without_download_the_message_says_every_way(tmp_path, monkeypatch, fake_download):
    monkeypatch.delenv("IAV_DOWNLOAD", raising=False)
    monkeypatch.setenv("IAV_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("cifar10", "train")
    msg = str(err.value)
    assert fake_download == []
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert f"$IAV_DATA={tmp_path}" in msg and "IAV_DOWNLOAD=1" in msg and "papermill" in msg and "download=True" in msg


def test_unknown_iav_download_value(tmp_path, monkeypatch):
    monkeypatch.setenv("IAV_DOWNLOAD", "maybe")
    with pytest.raises(ValueError, match="IAV_DOWNLOAD='maybe'"):
        get_dataset("cifar10", "test", root=tmp_path)
