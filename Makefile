# Two commands: `make demo` (install + train/sample/evaluate on the bundled data) and `make test`
# (install, plus Chromium for the viewer tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# PyTorch from the CPU wheel index (a small wheel, no CUDA libraries); a GPU user sets TORCH_INDEX to the
# CUDA index for their driver that pytorch.org lists for this torch (see README), or installs torch first.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install browser demo test bench-gpu
# apt-get needs root: sudo when not root
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# torch-cluster is built with CUDA kernels (FORCE_CUDA=1) when the installed torch has CUDA.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)" --index-url "$(TORCH_INDEX)"
	$(PIP) install -e ".[test]"
	$(PY) -c "import torch_cluster" 2>/dev/null || \
		FORCE_CUDA=$$($(PY) -c "import torch; print(int(torch.version.cuda is not None))") \
		$(PIP) install --no-build-isolation torch-cluster
	touch $@

install: $(VENV)/.installed

# The viewer tests open pages in a headless Chromium: installed from Debian's archive when missing.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

test: install browser
	WANDB_MODE=offline $(PY) -m pytest -q

# Trains runs/demo once (a second `make demo` reuses it; `rm -r runs/demo` to retrain), then
# forecasts and inpaints the held-out replica (data.held_out) and prints model vs baselines, also into
# docs/results.md.
demo: install
	test -f runs/demo/ckpt.pt || WANDB_MODE=offline $(PY) train.py --config configs/demo.yaml name=demo
	WANDB_MODE=offline $(PY) tools/demo.py runs/demo --results docs/results.md

# On a machine with a GPU and a CUDA build of torch: training step and forecast times against system size, in
# float32 and then in bfloat16 with the denoiser compiled (runs/bench_gpu*/bench.json).
bench-gpu: install
	$(VENV)/bin/hemeplm bench --device cuda --out runs/bench_gpu
	$(VENV)/bin/hemeplm bench --device cuda --dtype bfloat16 --compile --out runs/bench_gpu_bf16
