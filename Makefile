# Two commands: `make demo` (install + train/sample/evaluate on the bundled data) and `make test`
# (install, plus Chromium for the viewer tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU build of PyTorch; a GPU user sets TORCH_SPEC (see README) or installs torch into the venv first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install browser demo test
# apt-get needs root: sudo when not root
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[test]"
	$(PY) -c "import torch_cluster" 2>/dev/null || $(PIP) install --no-build-isolation torch-cluster
	touch $@

install: $(VENV)/.installed

# The viewer tests open pages in a headless Chromium: installed from Debian's archive when missing.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

test: install browser
	WANDB_MODE=offline $(PY) -m pytest -q

# Trains runs/demo once (a second `make demo` reuses it; `rm -r runs/demo` to retrain), then
# forecasts and inpaints the held-out 15% and prints model vs baselines.
demo: install
	test -f runs/demo/ckpt.pt || WANDB_MODE=offline $(PY) train.py --config configs/demo.yaml name=demo
	WANDB_MODE=offline $(PY) -m hemeplm.demo runs/demo
