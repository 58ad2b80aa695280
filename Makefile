# `make test` and `make demo` are all a fresh clone needs: both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: test demo clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest -q

# Until the training demo lands: build a small open_clip checkpoint (random weights: no
# network here), convert it, and embed scikit-image's sample photos against a few captions.
demo: $(INSTALLED)
	rm -rf out/demo
	$(PY) examples/demo_checkpoint.py out/demo
	$(VENV)/bin/jaxvlm convert --from open_clip out/demo/open_clip.safetensors out/demo/model --model ViT-B-32
	$(VENV)/bin/jaxvlm embed out/demo/model --images out/demo/astronaut.png out/demo/chelsea.png out/demo/coffee.png \
		--texts "an astronaut" "a cat" "a cup of coffee" --out out/demo/embeddings.npz

clean:
	rm -rf $(VENV) out
