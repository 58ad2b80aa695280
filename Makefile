# `make test` and `make demo` are all a fresh clone needs: both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: test test-faults demo clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# Two worker processes (one per core here), a test file per worker at a time so that each file's
# fixtures are built once; TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
test: $(INSTALLED)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

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
	rm -rf $(VENV) out
