# Two commands do everything on a fresh machine (Python 3.11 to 3.13 with venv):
#   make run    set up, then run the whole workflow locally (the real state machine and handlers,
#               AWS played by moto) on the bundled sample drop folder, into out/research
#   make test   set up, then lint and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SAM := .venv-sam
CHECKOV := .venv-checkov
export SAM_CLI_TELEMETRY := 0

.PHONY: run deid test lint check-templates bench clean

$(STAMP): layers/deidflow/pyproject.toml requirements-dev.txt requirements-realfiles.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e "layers/deidflow[codecs,ocr,rekognition,cloud,local,orthanc]" -r requirements-dev.txt
	@# On Python 3.13 the OCR package's stale Requires-Python cap is overridden (see pyproject.toml).
	if $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then \
		$(BIN)/pip install --quiet --no-deps --ignore-requires-python "rapidocr-onnxruntime>=1.4,<1.5"; fi
	$(BIN)/pip install --quiet --no-deps -r requirements-realfiles.txt
	touch $(STAMP)

# Real DICOM shipped in Debian packages, and dicom3tools' validator: downloaded and unpacked here
# (no root needed). Skipped, with a note, where apt-get is missing; the tests then say what is.
REALFILES := .realfiles
DEBIAN_DATA := octave-dicom dicomscope dicom3tools dicomnifti libgdcm3.0
$(REALFILES)/debian/.installed:
	@mkdir -p $(REALFILES)/debs $(REALFILES)/debian
	@if command -v apt-get >/dev/null 2>&1; then \
		(cd $(REALFILES)/debs && apt-get download -q $(DEBIAN_DATA) 2>&1 | grep -v '^W: Download is performed unsandboxed' || true) && \
		for deb in $(REALFILES)/debs/*.deb; do dpkg-deb -x "$$deb" $(REALFILES)/debian; done && \
		touch $@; \
	else echo "make: no apt-get here: the Debian real files and dciodvfy are left out"; fi

run: $(STAMP)
	$(BIN)/deidflow local run samples/drop out/research

# The engine alone, no workflow: the same de-identification as a folder-to-folder command.
deid: $(STAMP)
	$(BIN)/deidflow deid samples/drop out/research

# PYTEST_ARGS: extra pytest arguments (CI's second Python passes -m "not slow").
test: $(STAMP) $(REALFILES)/debian/.installed lint check-templates
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(SAM)/.installed: requirements-sam.txt
	$(PYTHON) -m venv $(SAM)
	$(SAM)/bin/pip install --quiet -r requirements-sam.txt
	touch $@

$(CHECKOV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

# The SAM template and the Orthanc nested stack: SAM's own validation and lint, a real `sam build`
# (arm64 layer from manylinux wheels, no Docker), cfn-lint and checkov. A finding that does not apply
# is skipped in the template itself, with its reason.
check-templates: $(SAM)/.installed $(CHECKOV)/.installed
	$(SAM)/bin/sam validate --lint
	$(SAM)/bin/sam build --no-cached --build-dir .aws-sam/build
	@# What deploys: the engine and its edge, never the laptop-only rooms.
	@test -f .aws-sam/build/DeidflowLayer/python/deidflow/engine.py
	@for room in local testing; do \
		if [ -e .aws-sam/build/DeidflowLayer/python/deidflow/$$room ]; then \
			echo "the Lambda layer ships deidflow/$$room"; exit 1; fi; done
	$(SAM)/bin/cfn-lint template.yaml orthanc/template.yaml
	$(CHECKOV)/bin/checkov --quiet --compact --skip-download --framework cloudformation \
		-f template.yaml -f orthanc/template.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_deid.py

clean:
	rm -rf $(VENV) .venv-py313 $(SAM) $(CHECKOV) out .aws-sam .deidflow-local $(REALFILES)
