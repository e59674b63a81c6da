# Two commands on a fresh machine:  `make book` (the main job) and `make test` (the tests).
# Each installs what it needs into .venv when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PRESETS ?= tiny
export PYTHONUNBUFFERED := 1

.PHONY: install test test-fast book notebooks bench pretrain rehearse lab clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev,book]"
	touch $@

install: $(STAMP)
	bash tools/ensure_data.sh

test: $(STAMP)
	bash tools/ensure_browser.sh
	bash tools/ensure_data.sh
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser"

notebooks: $(STAMP)
	$(BIN)/python -m iavutils.publish.book run --presets $(PRESETS)

book: $(STAMP)
	$(BIN)/python -m iavutils.publish.book all --presets $(PRESETS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_iav.py

pretrain: $(STAMP)
	$(BIN)/python -m iavutils.world.pretrain --all

# JupyterLab on the .venv kernel, serving the repository, offline; it prints its URL.
# Options go to `jupyter lab`: `make lab LAB_ARGS="--no-browser --port 8890"`.
lab: $(STAMP)
	$(BIN)/python -m iavutils.publish.lab $(LAB_ARGS)

# Every chapter with the hub presets, offline, at smoke scale: a generated hub cache (random
# weights, real files and shapes) and CIFAR-10 in its official format, in a temporary folder.
# Default: the four real presets; `make rehearse PRESETS=beit,deit` for a subset.
rehearse: $(STAMP)
	$(BIN)/python -m iavutils.publish.rehearsal --presets $(if $(filter command line environment,$(origin PRESETS)),$(PRESETS),real)

clean:
	rm -rf _build book/_build book/generated runs
