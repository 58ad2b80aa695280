# `make test` and `make demo` are all a fresh clone needs: both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# The exact versions of every dependency the suite last passed with (`make lock` writes it);
# pyproject.toml keeps the ranges users install from.
LOCK := requirements-lock.txt

.PHONY: test test-slow test-faults test-latest lint lock pretrained-table demo clean

$(INSTALLED): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint $(LOCK) pip
	$(PY) -m pip install --quiet --constraint $(LOCK) -e ".[test]"
	touch $@

# $(call fresh_venv,DIR,WHAT): a new venv in DIR with WHAT installed at the newest releases (no lock)
define fresh_venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet $(2)
endef

# Two worker processes (one per core here), a test file per worker at a time so that each file's
# fixtures are built once; TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
test: $(INSTALLED)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "not slow"

# The heavy cases (marked slow): full-size models, doc blocks that train, the notebooks, multi-process
# runs, ahead-of-time TPU compiles. CI runs them next to `make test`.
test-slow: $(INSTALLED)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 -m slow

# ruff's lint rules and formatting (pyproject.toml's [tool.ruff]); `ruff format .` fixes the formatting
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The tests marked `latest` (the packaging checks, one parity test per converter, a train step, a
# notebook) in a fresh venv with the newest release of every dependency and jaxvlm installed as a
# user installs it (not editable): an upstream release that breaks jaxvlm shows here the day it ships.
test-latest:
	$(call fresh_venv,.venv-latest,".[test]")
	.venv-latest/bin/python -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|grain|torch|open.clip.torch|timm|transformers|kernels|huggingface.hub|tokenizers) '
	.venv-latest/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m latest

# Rewrites jaxvlm/assets/open_clip_pretrained.json from the installed open_clip, and the README's table
# of the pretrained pairs that load today (tests/test_pretrained.py fails when an open_clip release changes
# its table of published checkpoints, or a registered architecture changes the count)
pretrained-table: $(INSTALLED)
	$(PY) -c "import tests.conftest, runpy; runpy.run_module('jaxvlm.pretrained', run_name='__main__')"

# Rewrites $(LOCK) with the newest releases; then `make test` installs them into .venv and runs the
# suite: commit the lock once it passes.
lock:
	$(call fresh_venv,.venv-lock,-e ".[test]")
	{ echo "# Written by \`make lock\` on $$(date -u +%F) (Python $$($(PYTHON) -c 'import platform; print(platform.python_version())')): the versions \`make test\` installs."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

# The slow fault cases (tests/faults, marked faults_slow): 20 kill -9 points, the fuzzers at full
# length, a full disk, a lost process. `make test` runs the quick ones; both update docs/reliability.md.
test-faults: $(INSTALLED)
	$(PY) -m pytest -q tests/faults -m faults_slow

# Trains a tiny CLIP from scratch on scikit-learn's handwritten digits (built once as the
# jaxvlm_digits TFDS dataset in out/tfds), on CPU, in a few minutes; evaluates zero-shot top-1 on
# the held-out test split and prints where the model, checkpoints, logs and loss curves went.
demo: $(INSTALLED)
	rm -rf out/demo
	$(PY) -c "from jaxvlm.data.builders import build_digits; build_digits('out/tfds')"
	JAX_PLATFORMS=cpu $(VENV)/bin/jaxvlm train --config configs/demo.py --workdir out/demo --config.data.data_dir=out/tfds

clean:
	rm -rf $(VENV) .venv-latest .venv-lock out
