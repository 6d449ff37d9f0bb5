# The front door. `make run` converts a sample series; `make test` runs the whole suite.
# Both create .venv and install what they need on a machine with Python 3.11+, gcc and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SHARED := ../shared/data/dicom
# Debian packages of the real consumers of our output that the tests drive.
TOOLS  := admesh prusa-slicer
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench tools clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	rm -f $(VENV)/.installed-* && touch $@

tools:
	@missing=""; for t in admesh prusa-slicer; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (Debian packages)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(TOOLS) >/dev/null; \
	fi

run: $(STAMP)
	@mkdir -p out
	@if [ -d $(SHARED)/ct-phantom-head-1mm ]; then src=$(SHARED)/ct-phantom-head-1mm; \
	else src=$$($(BIN)/python -c 'import pydicom.data as d, pathlib; print(pathlib.Path(d.get_testdata_file("MR_small.dcm")).parent / "dicomdirtests/77654033/CT2")'); \
	  echo "$(SHARED) not found: converting pydicom's bundled CT series instead"; fi; \
	$(BIN)/dicomstl convert "$$src" -o out/sample-bone.stl --preset bone --keep largest \
	  --report out/sample-bone.json && echo "model: out/sample-bone.stl, report: out/sample-bone.json"

test: $(STAMP) tools
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/convert.py $(SHARED)/ct-phantom-head-1mm --json bench/results/convert-cpu.json

clean:
	rm -rf $(VENV) out .pytest_cache
