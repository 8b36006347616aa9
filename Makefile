# make run   - install, build data/ci.txt, train configs/cpu.yaml, generate from the checkpoint
# make test  - install, run the tests and ruff
# make lint  - ruff only; make bench - the two benchmarks at the seed shape (minutes on a CPU)
#
# TORCH picks the PyTorch build. The default pins a release: on a machine with an NVIDIA GPU, pip takes
# PyPI's CUDA build of it; on a CPU-only box with a local wheel (like CI), the CPU build. To choose, e.g.
#   make run TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

data/ci.txt: | install
	$(BIN)/python -m babygpt_pl.corpus --out data/ci.txt

run: install data/ci.txt
	$(BIN)/babygpt fit --config configs/cpu.yaml
	$(BIN)/babygpt predict --ckpt_path checkpoints/last.ckpt

test: install
	$(BIN)/python -m pytest
	$(MAKE) lint

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) outputs lightning_logs .pytest_cache
