"""CIFAR-10 in the official python format: a restricted reader, extraction and download.

The batches are read with a restricted unpickler that admits only the official structure, so
a crafted file cannot run code; a missing dataset is a :class:`DatasetNotFoundError` that says
which file to put where, or how to ask for the download.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .preprocess import _info_stats, _prepare

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10Dataset",
    "DatasetNotFoundError",
    "DatasetFormatError",
    "read_cifar_batch",
    "read_cifar_meta",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing and cannot be downloaded."""


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]
_CIFAR_META = "batches.meta"
_CIFAR_FILES = _CIFAR_TRAIN + _CIFAR_TEST + [_CIFAR_META]


class DatasetFormatError(ValueError):
    """A dataset file is not in the official format (damaged, or crafted to run code)."""


def _default_cifar_root() -> Path:
    return Path(os.environ.get("IAV_DATA", Path.home() / ".cache" / "iav" / "data"))


def _download_from_env() -> bool:
    """``IAV_DOWNLOAD`` from the environment: how notebooks (papermill) ask for downloads."""
    value = os.environ.get("IAV_DOWNLOAD", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"IAV_DOWNLOAD={os.environ['IAV_DOWNLOAD']!r} is not understood; set it to 1 (download missing data) or 0")


class CIFAR10Dataset(Dataset):
    """CIFAR-10 with the paper's preprocessing: resize to the model's input size, its mean/std.

    Reads the standard python-format files (``cifar-10-batches-py`` under ``root``) with a
    restricted unpickler that admits only the official structure (dicts, lists, strings, bytes,
    ints and uint8 NumPy arrays; see :func:`read_cifar_batch`), so a crafted file cannot run
    code. An archive ``cifar-10-python.tar.gz`` placed in ``root`` is extracted. With
    ``download=True`` (or ``IAV_DOWNLOAD=1`` in the environment) torchvision downloads and
    checksums the official archive; offline, a :class:`DatasetNotFoundError` says which file to
    put where.

    Items are ``(x [3,H,W] normalised, y int)``.

    Args:
        split: ``"train"`` or ``"test"`` (``"val"`` is accepted for ``"test"``: CIFAR-10 has no
            separate validation split and the paper validates on the test set).
        info: A :class:`iavutils.world.models.ModelInfo`; ``None``: 32×32, 0.5/0.5.
        root: Directory holding ``cifar-10-batches-py`` (default ``$IAV_DATA`` or
            ``~/.cache/iav/data``).
        download: Download if missing; ``None``: from the environment variable ``IAV_DOWNLOAD``
            (``1``: download), so that notebooks run by papermill can ask for it.
    """

    classes = CIFAR10_CLASSES

    def __init__(
        self, split: str = "train", info=None, root: str | os.PathLike | None = None, download: bool | None = None
    ) -> None:
        if split not in ("train", "test", "val"):
            raise ValueError(f"CIFAR-10 has splits 'train' and 'test', not {split!r}")
        self.split = split
        self.root = Path(root) if root is not None else _default_cifar_root()
        self.size, self.mean, self.std = _info_stats(info)
        self.info = info
        if download is None:
            download = _download_from_env()
        self.data, self.labels = _open_cifar(self.root, train=(split == "train"), download=download)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return 10

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, index: torch.Tensor | list[int] | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Items for many indices at once: ``x [B,3,H,W], y [B]``."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return _prepare(self.data[index].float() / 255, self.size, self.mean, self.std), self.labels[index]

    def pixels(self, index: torch.Tensor | list[int] | slice = slice(None)) -> torch.Tensor:
        """Native pixels in [0, 1] ``[B,3,32,32]``."""
        return self.data[index].float() / 255

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.get_batch([int(i)])
        return x[0], int(y[0])


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the official CIFAR-10 files hold.

    Plain containers and scalars need no globals at all. The only globals admitted are those
    NumPy uses to rebuild an array and its dtype, and ``_codecs.encode``, with which protocol-2
    pickles written by Python 3 spell ``bytes``. Anything else (``os.system``, ``builtins.eval``,
    any class with a ``__reduce__`` payload) is refused before it is called.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    })

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 str -> str, as torchvision reads them
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DatasetFormatError(
                f"{self.path} is not an official CIFAR-10 file: it asks to load {module}.{name}, which "
                f"the official files never contain (it may be crafted to run code, so it was not "
                f"unpickled). Delete it and put the files from the official archive ({_CIFAR_URL}) there."
            )
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise DatasetFormatError(f"{self.path} is not an official CIFAR-10 file (it uses persistent ids)")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except DatasetFormatError:
        raise
    except Exception as err:
        raise DatasetFormatError(
            f"{path} is not a readable CIFAR-10 file ({type(err).__name__}: {err}); it may be truncated. "
            f"Replace it with the file from the official archive ({_CIFAR_URL})."
        ) from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path} is not an official CIFAR-10 file: it holds a {type(obj).__name__}, not a dict")
    # Official files were written by Python 2 (str keys once read as latin1); files written by
    # Python 3 in the same format have bytes keys.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 python-format batch with the restricted unpickler and checks it.

    Args:
        path: A ``data_batch_*`` or ``test_batch`` file.

    Returns:
        ``(data uint8 [N,3072], labels int64 [N])``; each row is the R, G, B planes, row-major.

    Raises:
        DatasetFormatError: The file references anything but the official structure, or its
            data are not ``uint8 [N,3072]`` with ``N`` integer labels in ``0..9``. The message
            names the file.
    """
    path = Path(path)
    batch = _unpickle(path)
    missing = {"data", "labels"} - set(batch)
    if missing:
        raise DatasetFormatError(f"{path} is not a CIFAR-10 batch: it has no {sorted(missing)} entry (keys: {sorted(map(str, batch))})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: 'data' must be a uint8 array [N, 3072], got {desc}")
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DatasetFormatError(f"{path}: 'labels' must be a list of ints")
    if len(labels) != data.shape[0]:
        raise DatasetFormatError(f"{path}: {data.shape[0]} images but {len(labels)} labels")
    if labels and not (0 <= min(labels) and max(labels) <= 9):
        raise DatasetFormatError(f"{path}: labels must be in 0..9, found {min(labels)}..{max(labels)}")
    return data, np.asarray(labels, dtype=np.int64)


def read_cifar_meta(path: str | os.PathLike) -> list[str]:
    """Reads ``batches.meta`` with the restricted unpickler; returns the 10 class names.

    Raises:
        DatasetFormatError: Not the official structure (the message names the file).
    """
    path = Path(path)
    meta = _unpickle(path)
    names = meta.get("label_names")
    if isinstance(names, list):
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) for n in names):
        raise DatasetFormatError(f"{path}: 'label_names' must be a list of 10 class names")
    return names


def _extract_cifar(archive: Path, root: Path) -> None:
    """Extracts the CIFAR-10 folder from a local archive, refusing links and paths outside ``root``."""
    import tarfile

    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if not parts or parts[0] != _CIFAR_DIR or ".." in parts or Path(m.name).is_absolute():
                    continue  # only the dataset folder, nothing that could land elsewhere
                if not (m.isfile() or m.isdir()):
                    continue
                members.append(m)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, members=members, **kwargs)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetFormatError(
            f"cannot extract {archive} ({type(err).__name__}: {err}); it may be truncated. Replace it with "
            f"the official archive ({_CIFAR_URL})."
        ) from None


def _download_cifar(root: Path) -> None:
    """Downloads the official archive with torchvision (md5-checked) and extracts it."""
    import torchvision.datasets.cifar as tv_cifar

    tv_cifar.download_and_extract_archive(
        tv_cifar.CIFAR10.url, str(root), filename=tv_cifar.CIFAR10.filename, md5=tv_cifar.CIFAR10.tgz_md5
    )


def _open_cifar(root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N,3,32,32], labels int64 [N])`` of a split, read with our own reader."""
    folder = root / _CIFAR_DIR

    def present() -> bool:
        return all((folder / f).is_file() for f in _CIFAR_FILES)

    if not present() and (root / _CIFAR_TAR).is_file():
        _extract_cifar(root / _CIFAR_TAR, root)
    if not present():
        if not download:
            raise DatasetNotFoundError(_cifar_missing_message(root, "download is off"))
        try:
            _download_cifar(root)
        except Exception as err:
            if _is_network_error(err):
                raise DatasetNotFoundError(_cifar_missing_message(root, f"download failed: {type(err).__name__}: {err}")) from err
            raise
        if not present():
            raise DatasetNotFoundError(_cifar_missing_message(root, "the download did not produce the expected files"))
    read_cifar_meta(folder / _CIFAR_META)
    parts = [read_cifar_batch(folder / f) for f in (_CIFAR_TRAIN if train else _CIFAR_TEST)]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # uint8 [N,3,32,32]
    return images, torch.from_numpy(labels)


def _is_network_error(err: BaseException) -> bool:
    import urllib.error

    return isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError, OSError))


def _cifar_missing_message(root: Path, why: str) -> str:
    env = os.environ.get("IAV_DATA")
    where = f"$IAV_DATA={env}" if env else "default ~/.cache/iav/data; $IAV_DATA is not set"
    return (
        f"CIFAR-10 not found under {root} ({where}; {why}). Either\n"
        f"  * put the official archive at\n"
        f"        {root / _CIFAR_TAR}\n"
        f"    (from {_CIFAR_URL}; it is extracted on first use), or its extracted folder at\n"
        f"        {root / _CIFAR_DIR}/  (data_batch_1..5, test_batch, batches.meta),\n"
        f"    or point $IAV_DATA at the directory that holds them; or\n"
        f"  * download it, on a machine with network access: set IAV_DOWNLOAD=1 in the environment for "
        f"notebooks and papermill (e.g. `IAV_DOWNLOAD=1 papermill ...`), or pass download=True in the "
        f"library (get_dataset('cifar10', ..., download=True))."
    )

