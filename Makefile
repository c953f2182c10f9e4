# Two entry points: `make demo` and `make test`. Each builds or refreshes .venv by itself.
PYTHON ?= python3
VENV ?= .venv
# A CPU build by default; with a GPU, e.g. `make demo TORCH_SPEC="torch>=2.4,<3"`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test bench lint format venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

demo: venv
	$(BIN)/evalkit demo

# Evidently, the drift statistics' reference and the drift benchmark's peer, pins its own
# dependencies: it gets its own environment (the tests compare our values with its own).
# 0.7.23 does not import under pandas 3.
EVIDENTLY := benchmarks/.venv-evidently
$(EVIDENTLY)/.installed:
	test -x $(EVIDENTLY)/bin/python || $(PYTHON) -m venv $(EVIDENTLY)
	$(EVIDENTLY)/bin/pip install --quiet --disable-pip-version-check \
	  "evidently==0.7.23" "pandas<3" pyarrow
	touch $@

test: venv $(EVIDENTLY)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# pytest exits 5 when it collects no test: a suite that runs nothing is broken, not green.
	$(BIN)/pytest $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc; }

# Every comparison with a peer (lm-eval, TRL, transformers serve, Evidently, krippendorff and
# choix, sacrebleu), then their summary table in benchmarks/RESULTS.md (benchmarks/summary.py).
# `make bench QUICK=1` runs each at reduced sizes: a check that they run, not figures to quote.
bench: venv $(EVIDENTLY)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(BIN)/python benchmarks/bench_prepare.py
	QUICK=$(QUICK) $(BIN)/python benchmarks/summary.py

lint: venv
	$(BIN)/ruff check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .evalkit .pytest_cache
