# The two quick-start commands: `make train` and `make test` (each installs first).
PY ?= python
export WANDB_MODE ?= offline

.PHONY: install train test test-slow bench
install:
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"

train: install
	$(PY) src/train.py

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/step_time.py
