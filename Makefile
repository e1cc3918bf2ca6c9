# The two commands a newcomer needs: `make demo` (main job end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
RUNS ?= runs

.PHONY: setup data test lint demo clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,onnx]'
	touch $@

data:
	@bash scripts/ensure_fashion_mnist.sh "$(FMNIST_DIR)"

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .

# The main job end to end: pretrain (cached), search under a FLOPs budget, fine-tune, test, export.
DEMO_AGENT ?= ddpg
DEMO_FLOPS ?= 0.5
DEMO_EPISODES ?= 30
# Two epochs of pretraining and 30 evaluations keep the whole demo, set-up included, within 6 minutes on the
# 2-core VMs here (6 min 4 s with 40 evaluations on 2026-11-25).
DEMO_PRETRAIN_EPOCHS ?= 2
demo: setup
	$(BIN)/automl-prune search --model vgg-small --dataset fashion-mnist --flops $(DEMO_FLOPS) \
		--agent $(DEMO_AGENT) --episodes $(DEMO_EPISODES) --out $(RUNS)/demo --cache-dir $(RUNS)/cache \
		--data-root $(FMNIST_DIR) --pretrain-epochs $(DEMO_PRETRAIN_EPOCHS)

clean:
	rm -rf $(RUNS) .pytest_cache
