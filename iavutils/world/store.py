"""Where checkpoints and computed results live, written so a reader never sees half a file.

Everything under a run directory (``runs/`` by default) is written with :func:`atomic_write`:
the bytes go to a temporary file in the same directory, are flushed to disk, and the temporary
file is renamed over the target with :func:`os.replace`, which is atomic on POSIX and Windows.
A process killed mid-write therefore leaves either the old file or the new one, never a torn one.

:class:`ResultStore` caches ``dict[str, Tensor]`` results as safetensors files keyed by a stable
hash of ``(name, key)``, so notebooks never recompute what is already there.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["atomic_write", "atomic_write_json", "stable_hash", "ResultStore"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any threads write.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    # The rename itself lives in the directory entry; without this a power cut can lose it.
    # Not every platform can open a directory (Windows), which is fine to skip.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data_or_writer: bytes | str | Callable[[Path], Any]) -> Path:
    """Writes a file atomically: temporary file in the same directory, fsync, ``os.replace``.

    Args:
        path: Destination file. Parent directories are created.
        data_or_writer: The content (``bytes``, or ``str`` written as UTF-8), or a callable that
            receives the temporary file's path and writes the content there itself (for writers
            that want a filename, e.g. ``lambda p: save_file(tensors, p)`` or
            ``lambda p: torch.save(obj, p)``).

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target, so os.replace never crosses file systems.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        if callable(data_or_writer):
            os.close(fd)
            fd = -1
            data_or_writer(tmp)
        else:
            data = data_or_writer.encode("utf-8") if isinstance(data_or_writer, str) else data_or_writer
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented, key-sorted JSON with :func:`atomic_write`."""
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def stable_hash(name: str, key: Mapping[str, Any]) -> str:
    """A hash of ``(name, key)`` that is the same in every process and Python version.

    Keys are JSON-serialised with sorted keys (tuples and lists hash alike; paths as strings),
    so never use Python's salted ``hash``.
    """
    return hashlib.sha256(_canonical({"name": name, "key": dict(key)}).encode("utf-8")).hexdigest()[:20]


def _check_result(name: str, value: Any, what: str = "the value given to put()") -> None:
    """Raises a TypeError saying what a stored result must be, naming the offending entry."""
    how = (
        "Return tensors, e.g. {'score': torch.tensor(score)} for a number or "
        "{'scores': torch.as_tensor(list_of_floats)} for a list."
    )
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} for result {name!r} must be a dict[str, Tensor], got {type(value).__name__}. {how}")
    for k, v in value.items():
        if not isinstance(k, str):
            raise TypeError(f"{what} for result {name!r} must be a dict with str keys, got the key {k!r} ({type(k).__name__})")
        if not isinstance(v, torch.Tensor):
            raise TypeError(
                f"{what} for result {name!r} must be a dict[str, Tensor], but [{k!r}] is "
                f"{type(v).__name__} ({v!r:.60}). {how}"
            )


class ResultStore:
    """A directory of cached tensor results keyed by ``(name, key)``.

    Layout: ``{root}/cache/{name}/{hash}.safetensors`` plus ``{hash}.json`` (the sidecar holding
    the name and key in readable form). The sidecar is written after the tensors, so its presence
    marks a complete entry.

    Args:
        root: The run directory (e.g. ``"runs"``).

    Example:
        >>> store = ResultStore("runs")
        >>> out = store.cached("iav", {"preset": "tiny-dino", "epoch": 3}, lambda: {"iav": t})
    """

    def __init__(self, root: str | os.PathLike = "runs") -> None:
        self.root = Path(root)

    def paths(self, name: str, key: Mapping[str, Any]) -> tuple[Path, Path]:
        """Returns ``(tensor_file, sidecar_file)`` for an entry."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"invalid result name {name!r}: use a plain folder name")
        digest = stable_hash(name, key)
        folder = self.root / "cache" / name
        return folder / f"{digest}.safetensors", folder / f"{digest}.json"

    def get(self, name: str, key: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
        """Returns the stored result, or ``None`` when missing or unreadable (with a warning)."""
        tensor_path, sidecar_path = self.paths(name, key)
        if not (tensor_path.exists() and sidecar_path.exists()):
            return None
        try:
            sidecar = json.loads(sidecar_path.read_text())
            if sidecar.get("name") != name or _canonical(sidecar.get("key")) != _canonical(dict(key)):
                raise ValueError("sidecar does not match the requested key")
            return load_file(tensor_path)
        except Exception as err:  # corrupt entries are recomputed, not fatal
            warnings.warn(f"cached result {tensor_path} is unreadable ({err}); recomputing it", stacklevel=3)
            return None

    def put(
        self, name: str, key: Mapping[str, Any], value: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """Stores a result atomically and returns it.

        Raises:
            TypeError: ``value`` is not a ``dict[str, Tensor]``.
        """
        _check_result(name, value)
        value = {k: v.detach().cpu().contiguous() for k, v in value.items()}
        tensor_path, sidecar_path = self.paths(name, key)
        atomic_write(tensor_path, lambda p: save_file(value, p))
        atomic_write_json(
            sidecar_path,
            {
                "name": name,
                "key": json.loads(_canonical(dict(key))),
                "shapes": {k: list(v.shape) for k, v in value.items()},
                "meta": dict(meta or {}),
            },
        )
        return value

    def cached(
        self,
        name: str,
        key: Mapping[str, Any],
        compute: Callable[[], Mapping[str, torch.Tensor]],
        meta: Mapping[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Returns the stored result for ``(name, key)``, computing and storing it if missing.

        Args:
            name: Kind of result (a folder name, e.g. ``"global_iav"``).
            key: Everything the result depends on (preset, checkpoint epoch, parameters); must be
                JSON-serialisable.
            compute: Called with no arguments when the entry is missing or corrupt; returns a
                ``dict[str, Tensor]``.
            meta: Extra readable information for the sidecar (not part of the key).

        Returns:
            The result, as CPU tensors.

        Raises:
            TypeError: ``compute`` returned something other than a ``dict[str, Tensor]``.
        """
        hit = self.get(name, key)
        if hit is not None:
            return hit
        value = compute()
        _check_result(name, value, "what compute() returned")
        return self.put(name, key, value, meta=meta)

    def __contains__(self, item: tuple[str, Mapping[str, Any]]) -> bool:
        name, key = item
        tensor_path, sidecar_path = self.paths(name, key)
        return tensor_path.exists() and sidecar_path.exists()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"
