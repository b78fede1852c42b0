# The two quick-start commands: `make train` and `make test` (each installs first).
PY ?= python
export WANDB_MODE ?= offline
export PIP_ROOT_USER_ACTION ?= ignore

.PHONY: install train test test-fast bench
# Fashion-MNIST, the default job's data, from Debian's package (offline-installable).
FMNIST_DIR = /usr/share/datasets/fashion-mnist

install:
	@[ -d $(FMNIST_DIR) ] || apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) \
	  || echo "note: could not install dataset-fashion-mnist; pass data.root=DIR to src/train.py"
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"

train: install
	$(PY) src/train.py

test: install
	$(PY) -m pytest -q

# the unit tier: library, configs, registries, export format, refusals that need no run (no install)
test-fast:
	$(PY) -m pytest -q -m "not slow and not integration"

bench: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/step_time.py --repeats 30
	$(PY) benchmarks/binary_peak.py
	$(PY) benchmarks/peers.py --rounds 300
	$(PY) benchmarks/scale_effects.py
