# One-command set-up: every target builds the local venv it needs from nothing.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
LIB    := v2v_diffusion

.PHONY: install test sync-check nbtest pytest slow demo lab bench gpu-check browser-test clean

$(STAMP): settings.ini setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"          # CPU build for dev/CI; the GPU image brings its own
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## sync-check: nbdev_export must not change the library and nbdev_clean must not change the notebooks
sync-check: install
	@rm -rf .sync && mkdir -p .sync && cp -r $(LIB) .sync/lib && cp -r nbs .sync/nbs
	@$(BIN)/nbdev_export
	@$(BIN)/nbdev_clean
	@find $(LIB) .sync -name __pycache__ -prune -exec rm -rf {} +
	@diff -r .sync/lib $(LIB) || { echo "ERROR: notebooks and $(LIB)/ disagree: run nbdev_export and commit both"; rm -rf .sync; exit 1; }
	@diff -r .sync/nbs nbs >/dev/null || { echo "ERROR: notebooks are not clean: run nbdev_clean and commit"; rm -rf .sync; exit 1; }
	@rm -rf .sync && echo "sync-check: notebooks, library and cleanliness agree"

nbtest: install
	$(BIN)/nbdev_test --n_workers 2 --timing

pytest: install
	$(BIN)/python -m pytest -q -m "not slow" tests

## test: the README's test command (CI runs exactly this)
test: sync-check nbtest pytest

slow: install
	$(BIN)/python -m pytest -q -m slow tests

## demo: the README's main command: phantom data -> tiny VAE -> tiny diffusion -> inference -> report
demo: install
	$(BIN)/v2v-demo --out runs/demo

lab: install
	$(BIN)/pip install -q jupyterlab
	$(BIN)/jupyter lab --notebook-dir=nbs

bench: install
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/v2v-bench --out BENCHMARKS.md

## gpu-check: on a CUDA machine (< 8 min): seed-config steps fp16/bf16, memory vs estimate, MFU, largest batch, volume latency,
## appended to BENCHMARKS.md with the device name. GPU_CHECK_ARGS=--dry tries the same path on the CPU in seconds.
gpu-check: install
	$(BIN)/v2v-bench --gpu-check --out BENCHMARKS.md $(GPU_CHECK_ARGS)

## browser-test: the viewer notebook in JupyterLab in headless Chromium (Debian's: apt-get install -y chromium chromium-driver)
browser-test: install
	$(BIN)/pip install -q playwright          # the Python package only; it drives /usr/bin/chromium, never `playwright install`
	$(BIN)/python -m pytest -q -m slow tests/browser

clean:
	rm -rf $(VENV) runs cache .sync
