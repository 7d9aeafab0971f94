# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both work on a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# One pytest-xdist worker per core, each pinned to its core with one torch thread
# (tests/conftest.py), a test file per worker at a time (module fixtures built once):
# on 2 cores (Zen 3) the suite took 1063 s in one process and 616-634 s this way. Override,
# e.g. `make test PYTEST_ARGS=` for one process.
PYTEST_ARGS ?= -n auto --dist loadfile

.PHONY: demo test lint install clean readme-table

# A fresh .venv takes about 6.7 GB (PyTorch's x86-64 wheel is a CUDA build) and pip unpacks
# beside it: say so before starting rather than stop half-installed on "No space left on device"
# (a CI run did). NEED_GB=0 skips the check.
NEED_GB ?= 9
$(BIN)/python:
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); \
	if [ "$$free" -lt "$(NEED_GB)" ]; then \
	  echo "make: $$free GB free on this disk; a fresh $(VENV) needs about $(NEED_GB) GB (PyTorch's wheel is a CUDA build). Free space, or run with NEED_GB=0 to try anyway." >&2; \
	  exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip

# setup.py builds the optional native engine (issue 13) and the fused training BatchNorm
# (issue 14): a change to their sources rebuilds them.
NATIVE_SRC := setup.py $(wildcard src/mobilenetv2/runtime/native/_engine.cpp src/mobilenetv2/runtime/native/_kernels.inc src/mobilenetv2/runtime/native/_int8.inc src/mobilenetv2/runtime/native/_kernels_int8.inc src/mobilenetv2/runtime/native/_pool.h src/mobilenetv2/runtime/native/_plans.h src/mobilenetv2/runtime/native/_plans_int8.h src/mobilenetv2/model/_bnact.cpp src/mobilenetv2/model/_dwconv.inc)

$(STAMP): pyproject.toml $(NATIVE_SRC) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mobilenetv2 train --out runs/demo
	$(BIN)/mobilenetv2 deploy-demo --weights runs/demo/model.safetensors

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

# The deployment half of the demo (issue 5): fp32 ONNX + int8 QDQ of the trained digits
# model, both verified, accuracy and latency side by side (`demo` runs it after training).
.PHONY: deploy-demo
deploy-demo: $(STAMP)
	$(BIN)/mobilenetv2 deploy-demo --weights runs/demo/model.safetensors

# The demo model on a phone's runtimes (issue 11): .tflite and .pte, fp32 and int8 (calibrated
# on the digits train split), each verified in its own runtime (LiteRT, ExecuTorch; XNNPACK).
.PHONY: phone-demo
phone-demo: $(STAMP)
	$(BIN)/mobilenetv2 export --weights runs/demo/model.safetensors --format tflite -o runs/demo/model.tflite
	$(BIN)/mobilenetv2 export --weights runs/demo/model.safetensors --format tflite --precision int8 --calib digits -o runs/demo/model.int8.tflite
	$(BIN)/mobilenetv2 export --weights runs/demo/model.safetensors --format executorch -o runs/demo/model.pte
	$(BIN)/mobilenetv2 export --weights runs/demo/model.safetensors --format executorch --precision int8 --calib digits -o runs/demo/model.int8.pte

# The segmentation demo (issue 9): Mobile DeepLabv3 trained on the bundled digits-on-photos
# canvases, then evaluated (mIoU, per-class IoU, confusion) on their validation split.
.PHONY: demo-segment
demo-segment: $(STAMP)
	$(BIN)/mobilenetv2 train --recipe segment-demo --out runs/demo-segment
	$(BIN)/mobilenetv2 eval --weights runs/demo-segment/model.safetensors --data canvases \
		--out runs/demo-segment/eval

# Detection (issue 10): SSDLite width 0.5 trained on the digit canvases, COCO mAP, and its
# detections drawn on a validation canvas and on a real photograph.
.PHONY: demo-detect
demo-detect: $(STAMP)
	$(BIN)/mobilenetv2 train --recipe detect-demo --out runs/detect-demo
	$(BIN)/python -m mobilenetv2.data.det_canvases runs/detect-demo/samples
	$(BIN)/mobilenetv2 detect runs/detect-demo/samples --weights runs/detect-demo/model.safetensors --out runs/detect-demo/detections

readme-table: $(STAMP)
	$(BIN)/python bench/readme_table.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
	rm -f src/mobilenetv2/runtime/native/_engine*.so
