# The two quickstart commands: `make run` and `make test`.
PY ?= .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: run test venv demo-model contact-sheet bench

$(VENV_STAMP): requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt
	touch $(VENV_STAMP)

venv: $(VENV_STAMP)

# Creates the sample album on first run, indexes it with the shipped model, serves the UI on 127.0.0.1:7860.
run: $(VENV_STAMP)
	$(PY) -m app demo

test: $(VENV_STAMP)
	$(PY) -m pytest

# Reproduces models/cafe-tiny-sampleworld (see README "The shipped model").
demo-model: $(VENV_STAMP)
	bash training/reproduce_demo_model.sh

contact-sheet: $(VENV_STAMP)
	$(PY) -m data contact-sheet docs/contact_sheet.png --n 12 --seed 7
	$(PY) -m data contact-sheet docs/contact_sheet_varied.png --n 12 --seed 7 --style varied
