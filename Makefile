# featx: `make demo` and `make test` work on a fresh machine (they create .venv and install).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIPELINE ?= pipelines/demo.toml
DATA ?=
WEIGHTS ?=
# Offline development machines keep a real MobileNetV2 weights file beside the checkout;
# users with a network leave this empty and get Keras' own download.
DEMO_WEIGHTS ?= $(or $(WEIGHTS),$(wildcard ../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5))
FLAGS = $(if $(DATA),--data $(DATA)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(ARGS)

.PHONY: install demo features classify finetune test test-fast test-tf-count lint docs clean-cache bench bench-integrity bench-scale bench-export bench-groups compare

$(BIN)/featx: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/featx

demo: install
	$(BIN)/featx demo-data data/digits
	$(BIN)/featx extract -p pipelines/demo.toml $(if $(DEMO_WEIGHTS),--weights $(DEMO_WEIGHTS))
	$(BIN)/featx classify -p pipelines/demo.toml $(if $(DEMO_WEIGHTS),--weights $(DEMO_WEIGHTS))

features: install
	$(BIN)/featx extract -p $(PIPELINE) $(FLAGS)

classify: install
	$(BIN)/featx classify -p $(PIPELINE) $(FLAGS)

# the comparison: fine-tune the backbone on the same split (pipelines/flowers17-finetune.toml)
finetune: install
	$(BIN)/featx finetune -p $(PIPELINE) $(FLAGS)

# one table of every result: make compare ARGS="--sort fit_seconds /path/to/out"
compare: install
	$(BIN)/featx runs $(ARGS)

# Two pytest workers (pytest-xdist): the suite is mostly one busy core at a time (TensorFlow
# start-up, subprocesses, small models), so two halve its time on 2 cores. The Ray tests share
# one worker (xdist_group); the Flowers-17 store is extracted once for both (realdata.py).
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=15

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

# How many processes import TensorFlow during `make test` (each pays ~5 CPU-seconds of start-up
# first): tests/tfcount/sitecustomize.py, on every process's PYTHONPATH, appends the pid of each
# to a file (one the nobody-user tests may write too). TF_COUNT_TARGET=test-fast counts that one.
TF_COUNT_TARGET ?= test
test-tf-count: install
	@pids=$$(mktemp -d)/pids; chmod 777 $$(dirname $$pids); touch $$pids; chmod 666 $$pids; \
	PYTHONPATH=$(CURDIR)/tests/tfcount$${PYTHONPATH:+:$$PYTHONPATH} FEATX_TF_COUNT=$$pids \
	  $(MAKE) --no-print-directory $(TF_COUNT_TARGET); status=$$?; \
	echo "processes that imported TensorFlow: $$(cut -d" " -f1 $$pids | sort -u | wc -l) (pid and command line of each in $$pids)"; \
	exit $$status

lint: install
	$(BIN)/ruff check featx tests

# The docs site (mkdocs.yml, docs/): into site/, open site/index.html. --strict: a warning
# (a broken link, a field without a comment in featx/core/config.py) fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

bench: install
	$(BIN)/python benchmarks/bench.py $(ARGS)

# featx export-model's formats on Flowers-17: size, latency, throughput, float and int8 side by
# side, and their agreement with featx predict (needs ../shared and pip install 'featx[export]')
bench-export: install
	$(BIN)/python benchmarks/export_model.py $(ARGS)

# what the store's checksums cost on a 50k-row store (checked vs unchecked reads)
bench-integrity: install
	$(BIN)/python benchmarks/integrity.py

# what grouping duplicates for the split costs next to extraction: Flowers-17 (extracted
# here, needs ../shared) and 100k / 50k synthetic rows with planted copies (~10 min)
bench-groups: install
	$(BIN)/python benchmarks/groups.py $(ARGS)

# cost against the size of the data: 10k, 100k and 1M synthetic images (~30 min; ARGS=--quick
# stops at 100k, ARGS=--extract-1m extracts the 1M store instead of assembling it)
bench-scale: install
	$(BIN)/python benchmarks/scale.py $(ARGS)

clean-cache:
	rm -rf data/cache
