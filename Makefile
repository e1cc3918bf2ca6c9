# The two commands a newcomer needs: `make demo` (main job end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
RUNS ?= runs

.PHONY: setup data test lint docs demo clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e '.[dev,onnx]'
	$(BIN)/python scripts/warm_bytecode.py
	touch $@

data:
	@bash scripts/ensure_fashion_mnist.sh "$(FMNIST_DIR)"

# Two pytest workers, a test file each (files share cached base models between their tests): the suite is
# CPU-bound and single-threaded per test, so two processes use both cores of the project's 2-core machines.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# Style, the dependency rule (import-linter contracts in pyproject.toml), types (mypy, settings in pyproject.toml)
# and the docs site (a broken link or docstring reference fails the build).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(RUNS)/site

# The documentation at http://127.0.0.1:8000 while you edit it.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The main job end to end: pretrain (cached), search under a FLOPs budget, fine-tune, test, export.
DEMO_AGENT ?= auto
DEMO_FLOPS ?= 0.5
DEMO_EPISODES ?= 20
# One epoch of pretraining, the default searcher (`auto`: the sensitivity profile, 31 points at 20 evaluations,
# then its one-shot answer and 19 hedges, each compressed with reap, the default criterion: 2-3 s) and a ladder
# of the search's best, uniform and the one-shot answer keep the whole demo within 6 minutes on
# the 2-core VMs here (measured times: docs/benchmarks.md, "make demo on a fresh clone"). A real search uses
# the defaults (`--episodes 100`, `--rerank-top-k 3`).
DEMO_PRETRAIN_EPOCHS ?= 1
DEMO_RERANK_TOP_K ?= 1
demo: setup
	$(BIN)/automl-prune search --model vgg-small --dataset fashion-mnist --flops $(DEMO_FLOPS) \
		--agent $(DEMO_AGENT) --episodes $(DEMO_EPISODES) --out $(RUNS)/demo --cache-dir $(RUNS)/cache \
		--data-root $(FMNIST_DIR) --pretrain-epochs $(DEMO_PRETRAIN_EPOCHS) --rerank-top-k $(DEMO_RERANK_TOP_K)

clean:
	rm -rf $(RUNS) .pytest_cache
