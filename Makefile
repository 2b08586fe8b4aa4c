# Two entry points for a fresh machine: `make figures` and `make test`.
# Both create (or reuse) the virtual environment .venv and install valley with pinned versions.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install figures figures-full figures-paper data test test-compiled test-gpu lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

figures: $(STAMP)
	$(BIN)/valley figures --quick

figures-full: $(STAMP)
	$(BIN)/valley figures --full

# Optional: the real Fashion-MNIST files from the operating system's package (Debian/Ubuntu; needs root).
# valley finds them in /usr/share/datasets/fashion-mnist/ by itself; nothing is downloaded from anywhere else.
data:
	@if command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" != 0 ]; then echo "make data installs a system package and needs root: sudo make data"; exit 1; fi; \
		apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	else \
		echo "No apt-get here. Put the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...) in DIR/fashion_mnist/"; \
		echo "and pass --data-dir DIR (or set VALLEY_DATA=DIR); 'valley list' shows what is found."; \
	fi

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4

# Optional: every optimizer's compiled path (compiled=True) against its per-tensor path, on every branch (minutes).
test-compiled: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 -m compiled

# Optional, on a machine with a CUDA GPU: every optimizer's paths (per-tensor, multi-tensor, compiled) compared there.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --device cuda -m "compiled or not compiled" tests/optim/test_foreach.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs paper_figures/out
