# make demo: virtualenv + install + demo corpus + SimCLR Fast ResNet-34 training + evaluation table.
# make test: virtualenv + install + pytest.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_CONFIG ?= configs/simclr/fast_resnet34_demo.yml

.PHONY: demo test venv clean-demo

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,onnx]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(VENV)/bin/sslsv demo-corpus --output data/demo
	$(PY) train.py $(DEMO_CONFIG)
	$(PY) evaluate.py models/simclr/fast_resnet34_demo --trials demo --random-baseline

clean-demo:
	rm -rf data/demo models/simclr/fast_resnet34_demo
