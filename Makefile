# Two commands do everything on a fresh machine (Python 3.11+ with venv):
#   make run    set up, then run the whole workflow locally (the real state machine and handlers,
#               AWS played by moto) on the bundled sample drop folder, into out/research
#   make test   set up, then lint and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run deid test lint bench clean

$(STAMP): layers/deidflow/pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e "layers/deidflow[codecs,ocr,rekognition,cloud,local,orthanc]" -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/deidflow local run samples/drop out/research

# The engine alone, no workflow: the same de-identification as a folder-to-folder command.
deid: $(STAMP)
	$(BIN)/deidflow deid samples/drop out/research

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_deid.py

clean:
	rm -rf $(VENV) out
