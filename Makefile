# captionkit: `make demo` and `make test` set everything up on a fresh machine (Python 3.10+, Java).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DATA ?= data/shapes
DEMO_RUN ?= runs/shapes-demo
DEMO_IMAGES ?= 2000
DEMO_EPOCHS ?= 8

.PHONY: install demo test test-slow test-all gpu-check fuzz lint format docs bench clean browser

# The environment takes about 6 GB (PyTorch's CUDA build): say so before pip fails half-way.
NEED_GB ?= 8

$(STAMP): pyproject.toml
	@free_kb=$$(df -Pk . | awk 'NR == 2 {print $$4}'); \
	if [ "$$free_kb" -lt $$(( $(NEED_GB) * 1024 * 1024 )) ]; then \
		echo "error: $$(( free_kb / 1024 / 1024 )) GB free on the disk of $$(pwd); installing \
	captionkit's environment ($(VENV)) needs about $(NEED_GB) GB" >&2; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@test -f $(DEMO_DATA)/captions.txt || $(BIN)/captionkit make-shapes $(DEMO_DATA) --n-images $(DEMO_IMAGES)
	$(BIN)/captionkit train --preset fast --data $(DEMO_DATA) --out $(DEMO_RUN) --epochs $(DEMO_EPOCHS) \
		--min-count 1
	$(BIN)/captionkit evaluate --checkpoint $(DEMO_RUN) --data $(DEMO_DATA) --split test \
		--output $(DEMO_RUN)/test_metrics.json
	$(BIN)/python -c "import json; d = json.load(open('$(DEMO_DATA)/dataset_shapes.json')); \
		print('\n'.join(['$(DEMO_DATA)/Images/' + i['filename'] for i in d['images'] \
		if i['split'] == 'test'][:5]))" | xargs $(BIN)/captionkit caption --checkpoint $(DEMO_RUN)

# The fast tests (no real training runs); `test-slow` the ones marked slow (training, resume,
# DDP, fine-tuning, SCST, browser sessions); `test-all` both. CI (.ci/run) runs them all.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest

# On a machine with a CUDA GPU: install, the tests marked cuda (pytest -m cuda), then the GPU
# throughput figures of bench/bench_gpu.py (bench/results/gpu.json, gpu.md), within 8 minutes
# (GPU_CHECK_BUDGET_S=480) on one H100; without a GPU, one line saying so and exit status 0.
gpu-check:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" bash bench/gpu_check.sh

# The fuzz tests (tests/test_fuzz.py) with many more cases than the suite's quick profile
# (1,500 per target instead of 25; minutes). `-s` shows Hypothesis' per-test statistics.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/test_fuzz.py --hypothesis-show-statistics

# Debian/Ubuntu (~500 MB, as root or with sudo): headless Chromium and its WebDriver for the
# browser tests (tests/test_report.py, tests/test_serving.py), which skip without them (and fail
# under CI=true). Installs only what is missing.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver are installed"; \
	else \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update && \
		$$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium chromium-driver; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# The documentation site (docs/, mkdocs.yml) into site/. --strict: a broken link or anchor, or an
# API name that does not resolve, fails the build; nothing is fetched from the network.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

clean:
	rm -rf $(VENV) runs data site .pytest_cache
