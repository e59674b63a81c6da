"""The rehearsal's CIFAR-10: a few dozen images in the official python format.

``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``, pickled the way
the Python 2 originals are, by :func:`py2_pickle`) and the ``cifar-10-python.tar.gz`` archive,
written deterministically from a seed by :func:`write_cifar10`. Used by
:mod:`iavutils.publish.rehearsal` and the tests.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CIFAR_TRAIN_PER_BATCH", "CIFAR_TEST_IMAGES", "py2_pickle", "write_cifar10"]

#: CIFAR-10 of the rehearsal: images per training batch file (5 files) and in the test batch.
CIFAR_TRAIN_PER_BATCH = 8
CIFAR_TEST_IMAGES = 10


class _Py2Str(bytes):
    """Marks bytes that Python 2 pickled as ``str`` (what CIFAR-10's files hold everywhere)."""


def py2_pickle(obj: Any) -> bytes:
    """Pickle (protocol 2) of ``obj`` with the opcodes Python 2's cPickle wrote for CIFAR-10.

    Python 3 cannot write Python 2 pickles: its ``bytes`` become ``_codecs.encode`` calls and its
    ``str`` become unicode, while the official files hold Python 2 ``str`` (``BINSTRING``) that
    Python 3 decodes with the reader's ``encoding`` (``"latin1"``: ``str`` keys; ``"bytes"``:
    ``b'data'`` keys), and arrays reduced through ``numpy.core.multiarray._reconstruct``. Supported:
    ``dict``, ``list``, ``tuple``, ``int``, ``bool``, ``None``, ``bytes``/``str`` (both written as
    Python 2 ``str``, ``str`` encoded latin-1) and C-contiguous numpy arrays.
    """
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + len(b).to_bytes(4, "little") + b)

    def marked(items: Iterable[Any], end: bytes) -> None:
        # MARK, the items, then the opcode that collects everything since the mark.
        out.extend(b"(")
        for x in items:
            emit(x)
        out.extend(end)

    def emit(o: Any) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, (int, np.integer)):
            o = int(o)
            if 0 <= o < 256:
                out.extend(b"K" + bytes([o]))
            elif 0 <= o < 65536:
                out.extend(b"M" + o.to_bytes(2, "little"))
            elif -(2**31) <= o < 2**31:
                out.extend(b"J" + o.to_bytes(4, "little", signed=True))
            else:
                raise ValueError(f"int out of range for this writer: {o}")
        elif isinstance(o, bytes):
            string(bytes(o))
        elif isinstance(o, str):
            string(o.encode("latin1"))
        elif isinstance(o, tuple):
            if 1 <= len(o) <= 3:
                for x in o:
                    emit(x)
                out.extend({1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(o)])
            else:
                marked(o, b"t")
        elif isinstance(o, list):
            out.extend(b"]")
            if o:
                marked(o, b"e")
        elif isinstance(o, dict):
            out.extend(b"}")
            if o:
                marked((x for kv in o.items() for x in kv), b"u")
        elif isinstance(o, np.ndarray):
            # numpy 1.x's ndarray.__reduce__ under Python 2, as in the official files.
            a = np.ascontiguousarray(o)
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            string(b"b")
            out.extend(b"\x87R")
            out.extend(b"(")
            emit(1)
            emit(tuple(int(n) for n in a.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((a.dtype.str[1:], 0, 1))
            out.extend(b"R")
            order = "|" if a.dtype.itemsize == 1 else "<"
            emit((3, order, None, None, None, -1, -1, 0))
            out.extend(b"b")
            emit(False)
            string(a.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"py2_pickle cannot write {type(o).__name__}")

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _cifar_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[N,3072]`` uint8 rows (R, G, B planes, row-major): noise plus a class-coloured square."""
    n = len(labels)
    img = rng.integers(0, 96, size=(n, 3, 32, 32), dtype=np.int32)
    hues = np.stack([(np.arange(10) * 77) % 256, (np.arange(10) * 151 + 40) % 256, (np.arange(10) * 29 + 90) % 256], 1)
    for i, c in enumerate(labels):
        y, x = rng.integers(0, 16, size=2)
        img[i, :, y:y + 16, x:x + 16] = hues[c][:, None, None] + rng.integers(-20, 20, size=(3, 1, 1))
    return np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072)


def write_cifar10(
    root: str | os.PathLike,
    train_per_batch: int = CIFAR_TRAIN_PER_BATCH,
    test_images: int = CIFAR_TEST_IMAGES,
    seed: int = 0,
    folder: bool = True,
    archive: bool = True,
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Writes a small CIFAR-10 in the official python format under ``root``.

    ``folder``: ``root/cifar-10-batches-py/`` with ``data_batch_1`` … ``data_batch_5``,
    ``test_batch`` (dicts with ``data`` uint8 ``[N,3072]``, ``labels`` list of ints,
    ``batch_label``, ``filenames``), ``batches.meta`` (``label_names``, ``num_cases_per_batch``,
    ``num_vis``) and ``readme.html``, pickled as the Python 2 originals (:func:`py2_pickle`).
    ``archive``: ``root/cifar-10-python.tar.gz`` holding that folder. Byte-identical for a seed.

    Args:
        root: Destination (created).
        train_per_batch: Images in each of the five training files.
        test_images: Images in the test file.
        seed: Seeds images and labels.
        folder: Write the extracted folder.
        archive: Write the archive.

    Returns:
        File name -> ``(data [N,3072] uint8, labels)``.
    """
    from ..world.data import CIFAR10_CLASSES

    rng = np.random.default_rng(int(seed))
    files: dict[str, bytes] = {}
    arrays: dict[str, tuple[np.ndarray, list[int]]] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test_images if name == "test_batch" else train_per_batch
        labels = rng.permutation(np.arange(n) % 10).tolist()
        data = _cifar_images(np.asarray(labels), rng)
        what = "testing batch 1 of 1" if name == "test_batch" else f"training batch {name[-1]} of 5"
        entry = {
            "data": data,
            "labels": [int(v) for v in labels],
            "batch_label": what,
            "filenames": [f"{CIFAR10_CLASSES[c]}_s_{int(rng.integers(0, 10**6)):06d}.png" for c in labels],
        }
        files[name] = py2_pickle(entry)
        arrays[name] = (data, labels)
    files["batches.meta"] = py2_pickle({"num_cases_per_batch": train_per_batch,
                                        "label_names": list(CIFAR10_CLASSES), "num_vis": 3072})
    files["readme.html"] = b"<meta HTTP-EQUIV=\"REFRESH\" content=\"0; url=http://www.cs.toronto.edu/~kriz/cifar.html\">\n"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if folder:
        d = root / "cifar-10-batches-py"
        d.mkdir(exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
    if archive:
        buf = io.BytesIO()
        # Fixed owners and times, and a gzip header without a time: byte-identical archives.
        import gzip

        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                def add(name: str, data: bytes | None) -> None:
                    info = tarfile.TarInfo(name)
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 1244836416, 1000, 1000, "kriz", "kriz"
                    if data is None:
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    else:
                        info.size, info.mode = len(data), 0o644
                        tar.addfile(info, io.BytesIO(data))

                add("cifar-10-batches-py", None)
                for name in sorted(files):
                    add(f"cifar-10-batches-py/{name}", files[name])
        tmp = root / "cifar-10-python.tar.gz.incomplete"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, root / "cifar-10-python.tar.gz")
    return arrays
