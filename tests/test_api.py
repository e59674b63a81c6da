"""The public surface: every advertised top-level name resolves, lazily."""

import importlib
import subprocess
import sys

import pytest

import iavutils


@pytest.mark.parametrize("name", [n for n in iavutils.__all__ if n != "__version__"])
def test_every_export_resolves(name: str) -> None:
    obj = getattr(iavutils, name)
    module = importlib.import_module(f"iavutils.{iavutils._EXPORTS[name]}")
    assert obj is getattr(module, name)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        iavutils.nope  # noqa: B018


def test_import_is_lazy() -> None:
    # `import iavutils` must not pull torch in: the CLI help and tooling stay fast.
    code = "import sys, iavutils; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_implementation_per_method() -> None:
    # the engine is the public API: no `_fast` twins
    assert not [n for n in iavutils.__all__ if n.endswith("_fast")]
    assert iavutils._EXPORTS["smoothgrad"] == "core.attribution" and iavutils._EXPORTS["iav"] == "core.scores"
