"""Atomic writes and the cached result store."""

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from iavutils.world.store import ResultStore, atomic_write, stable_hash


def test_atomic_write_bytes_str_and_writer(tmp_path):
    p = tmp_path / "a" / "b.txt"
    atomic_write(p, "hello")
    assert p.read_text() == "hello"
    atomic_write(p, b"bytes")
    assert p.read_bytes() == b"bytes"
    t = {"x": torch.arange(3.0)}
    atomic_write(tmp_path / "t.safetensors", lambda q: save_file(t, q))
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "t.safetensors")["x"], t["x"])
    # no temporary files left behind, ordinary permissions
    assert sorted(os.listdir(tmp_path / "a")) == ["b.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write(p, "old")

    def broken(q):
        q.write_text("half-writ")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(p, broken)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_stable_hash_is_order_independent():
    assert stable_hash("n", {"a": 1, "b": [1, 2]}) == stable_hash("n", {"b": [1, 2], "a": 1})
    assert stable_hash("n", {"a": 1}) != stable_hash("n", {"a": 2})
    assert stable_hash("n", {"a": 1}) != stable_hash("m", {"a": 1})


def test_cached_computes_once(tmp_path):
    store = ResultStore(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"v": torch.randn(4, 3)}

    key = {"preset": "tiny-dino", "epoch": 3, "noise": 0.15}
    a = store.cached("iav", key, compute)
    b = store.cached("iav", dict(reversed(list(key.items()))), compute)
    assert len(calls) == 1
    assert torch.equal(a["v"], b["v"])
    assert ("iav", key) in store
    c = store.cached("iav", {**key, "epoch": 4}, compute)
    assert len(calls) == 2 and not torch.equal(a["v"], c["v"])
    tensor_path, sidecar = store.paths("iav", key)
    assert json.loads(sidecar.read_text())["key"] == key


def test_corrupt_entry_is_recomputed_with_warning(tmp_path):
    store = ResultStore(tmp_path)
    key = {"k": 1}
    store.cached("x", key, lambda: {"v": torch.ones(2)})
    tensor_path, _ = store.paths("x", key)
    tensor_path.write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        out = store.cached("x", key, lambda: {"v": torch.zeros(2)})
    assert torch.equal(out["v"], torch.zeros(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(store.cached("x", key, lambda: {"v": torch.ones(2)})["v"], torch.zeros(2))


def test_missing_sidecar_means_missing(tmp_path):
    store = ResultStore(tmp_path)
    store.cached("x", {"k": 1}, lambda: {"v": torch.ones(2)})
    _, sidecar = store.paths("x", {"k": 1})
    sidecar.unlink()  # as if killed between the two writes
    assert store.get("x", {"k": 1}) is None
    assert torch.equal(store.cached("x", {"k": 1}, lambda: {"v": torch.full((2,), 7.0)})["v"], torch.full((2,), 7.0))


def test_bad_name_and_value(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError):
        store.cached("../evil", {}, lambda: {})
    with pytest.raises(TypeError):
        store.cached("x", {}, lambda: torch.ones(1))
