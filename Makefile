# `make demo` and `make test` set up everything they need on a fresh Debian machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# the base install only (no napari extra): what `pip install napari-qlty` gives
CORE_VENV ?= .venv-core
TORCH_VERSION ?= 2.13.0
export XDG_RUNTIME_DIR ?= /tmp/napari-qlty-runtime

.PHONY: demo test env system-deps check-core bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The pinned CPU build lies on local disk here; elsewhere pip fetches it.
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[testing]"
	touch $@

env: $(VENV)/.installed

$(CORE_VENV)/.installed: pyproject.toml
	test -x $(CORE_VENV)/bin/python || python3 -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install -q --upgrade pip
	$(CORE_VENV)/bin/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(CORE_VENV)/bin/python -m pip install -q -e .
	touch $@

check-core: $(CORE_VENV)/.installed
	$(CORE_VENV)/bin/python scripts/check_core_install.py

system-deps:
	@bash scripts/system-deps.sh

demo: env
	$(PY) -m napari_qlty.demo

test: env system-deps check-core
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	xvfb-run -a -s "-screen 0 1280x1024x24" $(PY) -m pytest -q

bench: env
	bash benchmarks/run.sh

clean:
	rm -rf $(VENV) $(CORE_VENV) build *.egg-info src/*.egg-info
