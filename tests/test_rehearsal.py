"""The rehearsal of the real path: its generated hub cache and CIFAR-10, and the whole run.

The generators must produce what the real downloads hold, in the layouts the real loaders read
(``timm.create_model(..., pretrained=True)`` and ``hf_hub_download`` offline, torchvision's /
our CIFAR-10 reader); the slow test runs every notebook for ``beit`` and ``deit`` (timm ``Beit``
and ``VisionTransformer``) and builds the book.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from iavutils.publish import rehearsal, rehearsal_cifar, rehearsal_hub
from iavutils.world.data import CIFAR10_CLASSES, get_dataset
from iavutils.world.models import PRESETS, REAL_PRESETS

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))


# ---- CIFAR-10 --------------------------------------------------------------------------------


def test_py2_pickle_is_what_python2_wrote():
    entry = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [3, 300, 70000],
             "batch_label": "training batch 1 of 5", "filenames": ["a.png", "b.png"]}
    blob = rehearsal_cifar.py2_pickle(entry)
    ops = {op.name for op, _, _ in pickletools.genops(blob)}
    # Python 2 str opcodes only: no unicode strings, no _codecs.encode calls (Python 3's bytes)
    assert not ops & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}
    globals_ = {arg for op, arg, _ in pickletools.genops(blob) if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    as_str = pickle.loads(blob, encoding="latin1")  # how torchvision reads the files
    assert set(as_str) == {"data", "labels", "batch_label", "filenames"}
    assert as_str["data"].dtype == np.uint8 and np.array_equal(as_str["data"], entry["data"])
    assert as_str["labels"] == [3, 300, 70000] and as_str["filenames"] == ["a.png", "b.png"]
    as_bytes = pickle.loads(blob, encoding="bytes")  # the CIFAR page's own recipe
    assert set(as_bytes) == {b"data", b"labels", b"batch_label", b"filenames"}


def test_cifar10_folder_and_archive_load_through_get_dataset(tmp_path):
    arrays = rehearsal_cifar.write_cifar10(tmp_path / "folder", folder=True, archive=False)
    rehearsal_cifar.write_cifar10(tmp_path / "archive", folder=False, archive=True)
    assert not (tmp_path / "archive" / "cifar-10-batches-py").exists()
    with tarfile.open(tmp_path / "archive" / "cifar-10-python.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["cifar-10-batches-py"] + sorted(
            f"cifar-10-batches-py/{n}" for n in
            ["batches.meta", "readme.html", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)])
    info = PRESETS["deit"]
    n_train = 5 * rehearsal_cifar.CIFAR_TRAIN_PER_BATCH
    for root in (tmp_path / "folder", tmp_path / "archive"):
        train = get_dataset("cifar10", "train", info=info, root=root)
        test = get_dataset("cifar10", "test", info=info, root=root)
        assert len(train) == n_train and len(test) == rehearsal_cifar.CIFAR_TEST_IMAGES
        x, y = train[1]
        data, labels = arrays["data_batch_1"]
        assert x.shape == (3, 224, 224) and y == labels[1]
        expected = torch.from_numpy(data[1].reshape(3, 32, 32).astype(np.float32) / 255)
        assert torch.allclose(info.denormalize(x).mean(), expected.mean(), atol=0.02)
        assert sorted(set(test.labels.tolist())) == list(range(10))
        assert tuple(getattr(train, "classes", CIFAR10_CLASSES)) == tuple(CIFAR10_CLASSES)
    # deterministic: the same bytes from the same seed
    rehearsal_cifar.write_cifar10(tmp_path / "again", folder=False, archive=True)
    assert ((tmp_path / "again" / "cifar-10-python.tar.gz").read_bytes()
            == (tmp_path / "archive" / "cifar-10-python.tar.gz").read_bytes())


# ---- the model hub ---------------------------------------------------------------------------


def test_beit_pt22k_state_dict_has_the_checkpoints_keys_and_shapes():
    sd = rehearsal_hub.beit_pt22k_state_dict(seed=0)
    assert sd["beit.embeddings.mask_token"].shape == (1, 1, 768)
    assert sd["beit.encoder.relative_position_bias.relative_position_bias_table"].shape == (732, 12)
    assert sd["beit.encoder.relative_position_bias.relative_position_index"].shape == (197, 197)
    assert sd["lm_head.weight"].shape == (8192, 768) and sd["layernorm.weight"].shape == (768,)
    assert sd["beit.encoder.layer.11.attention.attention.query.weight"].shape == (768, 768)
    assert not any(k.endswith("key.bias") for k in sd)  # BEiT has no key bias
    assert not any("relative_position_bias_table" in k and "layer." in k for k in sd)  # shared only
    assert len([k for k in sd if k.startswith("beit.encoder.layer.")]) == 12 * 17
    again = rehearsal_hub.beit_pt22k_state_dict(seed=0)
    assert all(torch.equal(sd[k], again[k]) for k in sd)


@pytest.mark.slow  # four ViT-B/16 files of ~350 MB written and loaded: ~40 s idle, minutes when loaded
def test_hub_cache_loads_offline_through_load_model(tmp_path):
    hf_home = tmp_path / "hf"
    snapshots = rehearsal_hub.make_hub_cache(hf_home, list(REAL_PRESETS), seed=0)
    assert set(snapshots) == set(REAL_PRESETS)
    from huggingface_hub import scan_cache_dir

    scan = scan_cache_dir(hf_home / "hub")
    assert not scan.warnings
    repos = {r.repo_id: {f.file_name for rev in r.revisions for f in rev.files} for r in scan.repos}
    assert repos == {repo: set(files) for repo, files in rehearsal_hub.HUB_FILES.values()}
    # A fresh process, hub offline: the presets load through timm's / our own hub code paths.
    code = (
        "import torch\n"
        "from iavutils.world.models import load_model\n"
        "for p in ('beit', 'dino', 'deit', 'in21k'):\n"
        "    m, info = load_model(p, num_classes=10)\n"
        "    out = m(torch.zeros(1, 3, 224, 224))\n"
        "    print('OK', p, type(m).__name__, tuple(out.shape), float(m.blocks[0].norm1.weight.mean()))\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"),
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    lines = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("OK")]
    assert [ln[1:3] for ln in lines] == [["beit", "Beit"], ["dino", "VisionTransformer"],
                                         ["deit", "VisionTransformer"], ["in21k", "VisionTransformer"]], \
        out.stdout + out.stderr[-3000:]
    # the generated weights were loaded, not timm's initialisation (LayerNorm weights 1 ± 0.02·N)
    assert all(ln[3:5] == ["(1,", "10)"] and abs(float(ln[5]) - 1) < 0.01 and float(ln[5]) != 1.0 for ln in lines)


# ---- the harness -----------------------------------------------------------------------------


def test_first_failure_names_notebook_cell_and_error(tmp_path):
    nb = {"cells": [
        {"cell_type": "code", "execution_count": 1, "source": "x = 1", "outputs": []},
        {"cell_type": "markdown", "source": "text"},
        {"cell_type": "code", "execution_count": 2, "source": ["# comment\n", "x, y, m = f()\n"],
         "outputs": [{"output_type": "error", "ename": "ValueError",
                      "evalue": "not enough values to unpack (expected 3, got 2)", "traceback": []}]},
    ]}
    path = tmp_path / "05_global_iav.ipynb"
    path.write_text(json.dumps(nb))
    msg = rehearsal.first_failure(path, "05_global_iav")
    assert msg == ("05_global_iav, cell 2 (In [2]: x, y, m = f()): ValueError: not enough values to unpack "
                   "(expected 3, got 2)")
    nb["cells"][2]["outputs"] = []
    path.write_text(json.dumps(nb))
    assert rehearsal.first_failure(path, "05_global_iav") == ""


@pytest.mark.slow
def test_rehearsal_beit_deit_runs_every_notebook_and_builds_the_book(tmp_path):
    work = tmp_path / "rehearsal"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "iavutils.publish.rehearsal", "--presets", "beit,deit",
                               "--workdir", str(work)], cwd=REPO, capture_output=True, text=True, timeout=5400)
    finally:
        # ~4 GB of ViT-B/16 checkpoints and hub files: not worth keeping in pytest's temp folders
        for heavy in ("runs", "hf"):
            shutil.rmtree(work / heavy, ignore_errors=True)
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    (tmp_path / "rehearsal.log").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    report = json.loads((work / "rehearsal.json").read_text())
    assert list(report["times"]) == ["beit", "deit", "all"]  # each preset, then both together
    for preset in ("beit", "deit", "all"):
        assert sorted(report["times"][preset]) == NOTEBOOKS
    assert report["failure"] == "" and report["build_status"] == 0
    assert report["pages"] == sorted(f"{n}.html" for n in NOTEBOOKS)
    for name in NOTEBOOKS:
        nb = json.loads((work / "book" / "generated" / f"{name}.ipynb").read_text())
        assert not nb["metadata"]["papermill"].get("exception"), name
    # the localization chapter says why it is empty on CIFAR-10
    gmar = (work / "book" / "generated" / "08_gmar.ipynb").read_text()
    assert "has no object masks" in gmar
    print(f"rehearsal beit+deit: {seconds:.0f} s")
