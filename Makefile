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

demo: setup
	$(BIN)/automl-prune pretrain --model vgg-small --dataset fashion-mnist --cache-dir $(RUNS)/cache

clean:
	rm -rf $(RUNS) .pytest_cache
