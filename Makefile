# edgevis front door. `make demo` and `make test` work from a fresh clone: they build .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EV     := $(VENV)/bin/edgevis
MODEL  ?= toy_convgru
# every *_tiny model plus toy_convgru by default (read from the registry); FULL=1: the full-size models
MODELS ?= $(or $(shell $(EV) models --names $(if $(FULL),--full,--tiny) 2>/dev/null),toy_convgru)
SOURCE ?= 0
PRECISION ?= fp16
TRT_ROOT ?= /usr
# pip looks in /opt/wheels too where it exists (the local CPU torch wheel on our machines)
PIP_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: setup test test-slow demo onnx engines plugins check bench camera lint clean help

help:
	@echo "make demo | test | onnx | engines | plugins | check | bench | camera | lint | clean"

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_LINKS) -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# Tests and checks are about correctness, not speed: one OpenMP thread per torch process avoids
# oversubscribing 2-core machines (onnxruntime keeps its own thread pool).
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" tests

test-slow: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow tests

demo: setup
	$(EV) demo --out demo_out

onnx: setup
	@for m in $(MODELS); do for f in portable trt; do $(EV) export --model $$m --flavor $$f --out onnx || exit 1; done; done

engines: setup
	@for m in $(MODELS); do $(EV) build --model $$m --precision $(PRECISION) || exit 1; done

plugins:
	cmake -S src/edgevis/plugins -B build/plugins -DTENSORRT_ROOT=$(TRT_ROOT) -DCMAKE_BUILD_TYPE=Release
	cmake --build build/plugins -j

check: setup
	@for m in $(MODELS); do OMP_NUM_THREADS=1 $(EV) check --model $$m || exit 1; done
	@echo "Jetson: copy reports/check/ and run the 'polygraphy run ...' lines above (also in reports/check/*.summary.txt)"

# full-size models at their deployment resolution, every backend present (tiny ones are for tests)
BENCH_MODELS ?= $(or $(shell $(EV) models --names --full 2>/dev/null),toy_convgru)
bench: setup
	@for m in $(BENCH_MODELS); do $(EV) bench --model $$m --backends all || exit 1; done
	$(PY) -m edgevis.bench.readme

camera: setup
	$(EV) run --model $(MODEL) --source $(SOURCE) --show --save camera_out.mp4

arm-check: setup  ## MobileInst ONNX on aarch64 onnxruntime under qemu vs x86 (root cached in .cache/arm-root)
	tools/arm/build_root.sh .cache/arm-root
	$(PY) tools/arm/arm_check.py --root .cache/arm-root --model $(if $(filter mobileinst%,$(MODEL)),$(MODEL),mobileinst_tiny)

lint: setup
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf build onnx engines_cache demo_out reports/check .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
