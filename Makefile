# sammoe developer and user entry points. Everything runs inside ./.venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all test-wheel test-bench test-processes bench lint docs format clean foundation experts-train routers gate evaluate bench-train

$(STAMP): pyproject.toml $(wildcard experts/*/pyproject.toml)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: on these machines 2.13.0 is a CPU build on disk; other versions download gigabytes
	$(BIN)/pip install -q torch==2.13.0
	# [gui-test]: the viewer plugin and its headless tests (they skip without an X server; .ci/run installs Xvfb)
	$(BIN)/pip install -q -e '.[test,gui-test]'
	# the example experts are real plugins: installed like a user would, found through entry points
	$(BIN)/pip install -q $(wildcard experts/sammoe-expert-*)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sammoe demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests

# the built wheel in a fresh venv runs `sammoe demo --fast` outside the checkout (about 10 minutes)
test-wheel: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_wheel.py

# every benchmark's smoke run against the official code (slow: out of `make test`; CI runs it)
test-bench: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_benchmarks.py

# commands in new processes: a cohort run killed and resumed, two DDP processes (slow: out of `make test`)
test-processes: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_cohort_predict.py

bench: $(STAMP)
	$(BIN)/python benchmarks/encoder.py

lint: $(STAMP)
	$(BIN)/ruff check sammoe tests benchmarks experts docs
	$(BIN)/ruff format --check sammoe tests benchmarks experts docs/*.py docs/hooks
	# the layers of docs/architecture.md, as import-linter contracts (pyproject.toml)
	$(BIN)/lint-imports

# the documentation site into site/ (mkdocs.yml); --strict: any warning, e.g. a broken link, fails the build
docs: $(STAMP)
	$(BIN)/pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff format sammoe tests benchmarks experts
	$(BIN)/ruff check --fix sammoe tests benchmarks experts

# The training pipeline on the phantom dataset with the tiny backbone (configs/*.yaml; runs/ holds the runs).
# Three stages on click-centred crops (about 65 min on 2 CPU cores): pretrain, then the decoder at full lr, then
# more phantoms. Each stage starts from the previous one's runs/.../model.safetensors.
foundation: $(STAMP)
	$(BIN)/sammoe fit --config configs/foundation.yaml
	$(BIN)/sammoe fit --config configs/foundation.yaml --config configs/foundation_stage2.yaml
	$(BIN)/sammoe fit --config configs/foundation.yaml --config configs/foundation_stage3.yaml --model.init_args.export_path=sammoe/assets/foundation_tiny.safetensors

# Each expert: its decoder, then its own router (runs/experts/NAME/expert/{decoder,router}.safetensors); the
# example plugins are rebuilt with both and reinstalled.
experts-train: $(STAMP)
	$(BIN)/sammoe fit --config configs/finetune.yaml --config configs/experts/spinal_cord.yaml
	$(BIN)/sammoe fit --config configs/finetune.yaml --config configs/experts/textured_lesion.yaml
	$(MAKE) routers

routers: $(STAMP)
	$(BIN)/sammoe fit --config configs/router.yaml --config configs/experts/spinal_cord.yaml
	$(BIN)/sammoe fit --config configs/router.yaml --config configs/router_patch.yaml --config configs/experts/textured_lesion.yaml
	$(BIN)/python experts/build_examples.py --checkpoint spinal_cord=runs/experts/spinal_cord/expert/decoder.safetensors --checkpoint textured_lesion=runs/experts/textured_lesion/expert/decoder.safetensors
	$(BIN)/pip install -q --no-deps --force-reinstall ./experts/sammoe-expert-spinal-cord ./experts/sammoe-expert-textured-lesion

gate: $(STAMP)
	$(BIN)/sammoe fit --config configs/gate.yaml --model.init_args.export_path=sammoe/assets/gate_tiny.safetensors

evaluate: $(STAMP)
	$(BIN)/sammoe test --config configs/evaluate.yaml

bench-train: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
