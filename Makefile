# One-command set-up: every target builds the local venv it needs from nothing, and only ever uses that venv.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
LIB    := v2v_diffusion

## Where pip gets torch, the one dependency of several GB (see the README, "Installing"):
##   TORCH_INDEX=auto     (default) PyTorch's CPU-only index when it answers within 5 s, else pip's default index
##   TORCH_INDEX=default  pip's default index as configured (on Linux the CUDA build: about 4 GB with its libraries)
##   TORCH_INDEX=URL      any index, e.g. a CUDA one: make install TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_INDEX     ?= auto
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

## make lab LAB_ARGS="--no-browser --ip=0.0.0.0 --port=8888": extra JupyterLab flags; --allow-root is added as root
LAB_ARGS  ?=
LAB_ROOT  := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: install hooks test sync-check nbtest pytest dicom-validator slow demo quality lab docs bench gpu-check browser-test clear-outputs clean

$(STAMP): settings.ini setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@index='$(TORCH_INDEX)'; \
	if [ "$$index" = auto ]; then \
	  if $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; \
	  then index='$(TORCH_CPU_INDEX)'; echo "torch source (TORCH_INDEX=auto): the CPU-only index $$index"; \
	  else index=default; echo "torch source (TORCH_INDEX=auto): pip's default index ($(TORCH_CPU_INDEX) did not answer)"; fi; \
	else echo "torch source (TORCH_INDEX=$$index)"; fi; \
	if [ "$$index" = default ]; then set -x; $(BIN)/pip install -q "$(TORCH)"; \
	else set -x; $(BIN)/pip install -q --index-url "$$index" "$(TORCH)"; fi
	$(BIN)/pip install -q -e ".[dev]"
	@$(MAKE) --no-print-directory hooks
	touch $(STAMP)

install: $(STAMP)

## hooks: nbdev's git and Jupyter hooks (clean notebooks on save, merge notebooks); git worktrees are left alone
hooks:
	@if [ -d .git ]; then \
	  { PATH="$(abspath $(BIN)):$$PATH" $(BIN)/nbdev_install_hooks && \
	    sed -i 's|driver = nbdev_merge|driver = $(BIN)/nbdev_merge|' .gitconfig && \
	    sed -i 's|^nbdev_trust$$|$(BIN)/nbdev_trust|' .git/hooks/post-merge; } || \
	  echo "hooks: nbdev_install_hooks failed (see above); the install goes on without them"; \
	else echo "hooks: .git is not a folder here (a git worktree, or no git): nbdev_install_hooks skipped"; fi

## sync-check: nbdev_export must not change the library, nbdev_clean must not change the notebooks, and no
## notebook in nbs/ may hold outputs (JupyterLab saves them; `make clear-outputs` removes them)
sync-check: install
	@$(BIN)/python .ci/nb_outputs.py nbs
	@rm -rf .sync && mkdir -p .sync && cp -r $(LIB) .sync/lib && cp -r nbs .sync/nbs
	@$(BIN)/nbdev_export
	@$(BIN)/nbdev_clean
	@find $(LIB) .sync -name __pycache__ -prune -exec rm -rf {} +
	@diff -r .sync/lib $(LIB) || { echo "ERROR: notebooks and $(LIB)/ disagree: run nbdev_export and commit both"; rm -rf .sync; exit 1; }
	@diff -r .sync/nbs nbs >/dev/null || { echo "ERROR: notebooks are not clean: run nbdev_clean and commit"; rm -rf .sync; exit 1; }
	@rm -rf .sync && echo "sync-check: notebooks, library and cleanliness agree; no outputs in nbs/"

## clear-outputs: remove outputs and execution counts from the notebooks in nbs/ (cell tags and ids stay)
clear-outputs: install
	$(BIN)/python .ci/nb_outputs.py --clear nbs

nbtest: install
	$(BIN)/nbdev_test --n_workers 2 --timing

pytest: install dicom-validator
	$(BIN)/python -m pytest -q -m "not slow" tests

## dicom-validator: dciodvfy (Debian's dicom3tools) checks every DICOM series the tests write; installed when missing
## and apt is usable (root); under CI=true a missing validator fails, elsewhere those tests skip saying how to install it
dicom-validator:
	@command -v dciodvfy >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { apt-get update -qq && apt-get install -y -qq dicom3tools >/dev/null; } || true; }
	@command -v dciodvfy >/dev/null || { [ "$$CI" = true ] && { echo "ERROR: dciodvfy missing: apt-get install -y dicom3tools"; exit 1; }; \
		echo "note: dciodvfy missing (apt-get install -y dicom3tools): the DICOM validation tests will skip"; }

## test: the README's test command (CI runs exactly this)
test: sync-check nbtest pytest

slow: install
	$(BIN)/python -m pytest -q -m slow tests

## demo: the README's main command: phantom data -> tiny VAE -> tiny diffusion -> inference -> report
demo: install
	$(BIN)/v2v-demo --out runs/demo

## quality: the ablation of the formulation (trains the demo and four variants, ~half an hour on 2 cores) -> docs/QUALITY.md
quality: install
	$(BIN)/v2v-quality --demo-dir runs/demo --out runs/quality --doc docs/QUALITY.md

## lab: JupyterLab on nbs/ (after `make demo`, notebooks 21 and 22 open the demo run)
lab: install
	$(BIN)/jupyter lab --notebook-dir=nbs $(LAB_ROOT) $(LAB_ARGS)

## docs: the documentation site in _docs/ (nbdev pre-processing, then Quarto). Quarto comes from PyPI's
## quarto-cli into the venv; nbdev_docs itself is not called: without quarto it installs with sudo and a bare pip
docs: install
	@export PATH="$(abspath $(BIN)):$$PATH"; command -v quarto >/dev/null || $(BIN)/pip install -q quarto-cli || true; \
	command -v quarto >/dev/null || { echo "ERROR: no quarto: PyPI's quarto-cli is a source package that downloads the Quarto \
	binary from GitHub while it builds; that download failed (offline?). Put quarto on PATH and run make docs again."; exit 1; }
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/nbdev_proc_nbs
	cd _proc && PATH="$(abspath $(BIN)):$$PATH" quarto render --no-cache
	rm -rf _docs && mv _proc/_docs _docs && echo "docs: _docs/index.html"

bench: install
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/v2v-bench --out BENCHMARKS.md

## gpu-check: on a CUDA machine (< 8 min): seed-config steps fp16/bf16 (fp16 only on a V100), memory vs estimate,
## MFU, largest batch, volume latency, appended to BENCHMARKS.md with the device name. GPU_CHECK_ARGS=--dry tries the
## same path on the CPU in seconds.
gpu-check: install
	$(BIN)/v2v-bench --gpu-check --out BENCHMARKS.md $(GPU_CHECK_ARGS)

## browser-test: notebooks 21/22 and the viewer in JupyterLab in headless Chromium (Debian's: apt-get install -y chromium chromium-driver)
browser-test: install
	$(BIN)/pip install -q playwright          # the Python package only; it drives /usr/bin/chromium, never `playwright install`
	$(BIN)/python -m pytest -q -m slow tests/browser

clean:
	rm -rf $(VENV) runs cache .sync _proc _docs
