# One entry point for every job. The README's Quickstart uses `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
# the judge's limits and the repo's paths live in zeroshot/limits.py (standard library only: any python3 reads it)
limit = $(shell python3 -m zeroshot.limits $(1))
DATA ?= $(call limit,DEVSETS_DIR)
GT ?= $(DATA)/gt.json
OUT ?= dist/predictions.json
# make run: predict.py's run report (tiers per image) and the evaluation's HTML page
RUN_REPORT ?= dist/report.json
HTML ?= dist/report.html
# natural images for the export checks and the int8 calibration (the dev set's images)
CALIB ?= $(call limit,CALIBRATION_DIR)
BUNDLE ?= dist/submission.zip
CAP_MB ?= $(call limit,ARCHIVE_CAP_MB)
JUDGE_PYTHON ?= $(PY)
REF ?=
JUDGE_ARGS ?=
# make train: the contest's metadata.json and images folder, the frozen image tower's model folder, the output
METADATA ?=
IMAGES ?=
IMAGE_MODEL ?= model
TRAIN_OUT ?= dist/text_tower
TRAIN_ARGS ?=

.PHONY: help venv model bank run data-check test vendor bundle judge judge-docker bench bench-retrieval export clean train \
	suite suite-data reference-env export-parity parity-fixtures

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

.venv/.stamp: requirements-build.txt requirements-nodeps.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-build.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

venv: .venv/.stamp  ## the build/test environment in .venv

# the source frameworks' own pipelines (real torchvision beside torch 2.14.1, ~5.5 GB), for end-to-end parity only
REF_PY := .venv-ref/bin/python
.venv-ref/.stamp: requirements-reference.txt requirements-nodeps.txt
	python3 -m venv .venv-ref
	$(REF_PY) -m pip install -q --disable-pip-version-check -r requirements-reference.txt
	$(REF_PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

reference-env: .venv-ref/.stamp  ## the reference environment in .venv-ref: open_clip, transformers, M-CLIP, ruCLIP with real torchvision

# every module train.build_default imports (also inside functions; tests/test_layout.py checks the list),
# its data, and the pip-installed weights (via .venv/.stamp)
MODEL_SOURCES := $(addprefix train/,__init__.py build_default.py concepts.py contract.py image_encoder.py \
	manifest_io.py onnx_compat.py text_encoder.py use_m.py visual_bank.py) \
	$(addprefix contest/,__init__.py suite_data.py) \
	$(addprefix zeroshot/,__init__.py command.py datasets.py embed.py encoders.py images.py limits.py linear.py manifest.py \
	  outputs.py progress.py resources.py scoring.py text.py visual_bank.py) \
	$(wildcard train/vocab/*.tsv train/vocab/visual_bank/*)

model/manifest.json: .venv/.stamp $(MODEL_SOURCES)
	@if [ -n "$(CALIB)" ] && [ ! -d "$(CALIB)" ]; then \
	  echo "make model: no calibration images at CALIB=$(CALIB); the int8 default needs a folder of natural photos:" \
	    "set CALIB=DIR, or CALIB= for a model without the int8 variant (fp32 only)" >&2; exit 2; fi
	$(PY) -m train.build_default --out model $(if $(CALIB),--calibration $(CALIB))

model: model/manifest.json  ## build the default model into model/ (offline, from pip-installed weights)

run: data-check model  ## set up and predict DATA (default: the dev set) with the default model, then score it (and write the HTML report HTML)
	PYTHON=$(PY) ./setup.sh
	PYTHON=$(PY) ./predict.sh $(DATA) $(OUT) --report $(RUN_REPORT)
	@if [ -f "$(GT)" ]; then $(PY) -m zeroshot.evaluate $(GT) $(OUT) --per-class --data $(DATA) \
	  --html $(HTML) --run-report $(RUN_REPORT); fi

data-check:
	@if [ ! -d "$(DATA)" ]; then \
	  echo "make run: no datasets folder at DATA=$(DATA); run with DATA=/path/to/datasets" >&2; exit 2; fi

test: venv vendor  ## the test suite (CI runs this); vendor/ lets it check the real wheels install offline
	$(PY) -m pytest -q tests

bench: venv model  ## images/s on one core: predict.py vs the organisers' ResNet-50 vs the input ceiling (int8: the model's variants.int8 or INT8_MODEL=dir)
	$(PY) -m contest.bench --model model --data $(DATA) $(if $(INT8_MODEL),--int8-model $(INT8_MODEL)) \
		--out bench/results/bench.json

bench-retrieval: venv  ## the retrieval index at 10^4, 10^5, 10^6 vectors of cached suite features + noise, one thread: build time, disk, memory, latency, recall@10
	$(PY) -m train.experiments.retrieval_scale --out dist/bench-retrieval.json

# make suite: a model folder over every set of the tuning suite and the dev set, at a rung (default: the ladder's choice)
MODEL ?= model
SUITE ?= $(call limit,SUITE_DIR)
MIRROR ?= $(call limit,SNAPSHOTS_DIR)
RUNG ?=
SUITE_JSON ?= dist/suite.json

suite-data: venv  ## build the tuning suite's images and labels in SUITE from pinned snapshots of public repositories (MIRROR)
	$(PY) -m contest.suite_data build-all --mirror $(MIRROR) --root $(SUITE)
	$(PY) -m contest.suite_data check --root $(SUITE)

bank: venv model  ## the visual concept bank (train/vocab/visual_bank) from train/bank_sources + the suite's specs, from snapshots in MIRROR
	$(PY) -m train.visual_bank build --mirror $(MIRROR) --suite $(SUITE) --model model

suite: venv $(if $(filter model,$(MODEL)),model)  ## MODEL over every set of SUITE + the dev set at RUNG (default: the ladder's choice), one thread; table + SUITE_JSON
	$(PY) -m contest.suite run --model $(MODEL) --suite $(SUITE) $(if $(RUNG),--rung $(RUNG)) --json $(SUITE_JSON)

train: venv  ## train a text tower on METADATA + IMAGES against IMAGE_MODEL's image encoder, eval on DATA, model in TRAIN_OUT/model
	@if [ -z "$(METADATA)" ] || [ -z "$(IMAGES)" ]; then \
	  echo "make train: set METADATA=metadata.json and IMAGES=folder (the contest's format; TRAIN_ARGS for more options)" >&2; exit 2; fi
	$(PY) -m train.text_tower --metadata $(METADATA) --images $(IMAGES) --image-model $(IMAGE_MODEL) \
	  --out $(TRAIN_OUT) $(if $(wildcard $(GT)),--eval $(DATA)) $(TRAIN_ARGS)

EXPORT_OUT ?= dist/exported-model
export: venv vendor  ## a CLIP-family checkpoint -> EXPORT_OUT, validated: make export ARGS="--from hf DIR" (see docs/export.md)
	@if [ -z "$(ARGS)" ]; then echo 'make export: set ARGS, e.g. ARGS="--from open_clip --arch ViT-B-32 --checkpoint FILE"' >&2; exit 2; fi
	$(PY) -m train.export $(ARGS) --out $(EXPORT_OUT)

parity-fixtures: venv reference-env  ## tests/fixtures/parity: the five sources' own pipelines on the parity image set (tiny random checkpoints)
	$(PY) -m train.export.golden --dev-set $(DATA)

export-parity: venv vendor reference-env  ## each source's small random checkpoint exported, predict.sh on DATA vs its own pipeline, exact and draft
	$(PY) -m train.export.parity_check --dev-set $(DATA) --out dist/export-parity

vendor: .venv/.stamp  ## wheels for the judge (CPython 3.8) and this machine (3.11) in vendor/ (PyPI the first time, then offline)
	$(PY) -m contest.vendor --out vendor

bundle: model vendor  ## the submission archive BUNDLE (dist/submission.zip); prints sizes, fails over CAP_MB (default: the judge's cap)
	$(PY) -m contest.bundle --model model --vendor vendor --out $(BUNDLE) $(if $(CAP_MB),--cap-mb $(CAP_MB))

JUDGE_SCORING = $(if $(wildcard $(GT)),--gt $(GT)) $(if $(REF),--reference $(REF)) $(JUDGE_ARGS)

judge: bundle  ## run BUNDLE like the organisers on DATA: no network, 1 CPU (pin + 1-CPU cgroup quota when root), 8 GB, 23 min; report.json kept; REF=preds.json to compare
	$(PY) -m contest.judge $(BUNDLE) $(DATA) --python $(JUDGE_PYTHON) --out-dir dist/judge $(JUDGE_SCORING)

judge-docker: bundle  ## the same in a container: docker run --cpus=1 --memory=8g --network=none (starts dockerd if none runs and leaves it running: see its pid line; builds the image)
	$(PY) -m contest.judge --docker $(BUNDLE) $(DATA) --out-dir dist/judge-docker $(JUDGE_SCORING)

clean:  ## remove generated files
	rm -rf model dist vendor .deps
