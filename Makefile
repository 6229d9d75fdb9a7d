# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-chaos test-unit test-debug lint fmt type bench bench-compare clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev,embedded,testing,dashboard,otel,prometheus]'
	touch $(STAMP)

venv: $(STAMP)

# The benchmarks also draw a chart (matplotlib, the `bench` extra).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,embedded,testing,dashboard,otel,prometheus,bench]'
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py

test: $(STAMP)
	$(PY) -m pytest -q
	PYTHONASYNCIODEBUG=1 $(PY) -m pytest -q -x -p no:cacheprovider tests/unit tests/integration

# The fault suite: restarted, frozen and proxied servers (tests/chaos, not in `make test`).
test-chaos: $(STAMP)
	$(PY) -m pytest -q tests/chaos

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check dbos_async

fmt: $(STAMP)
	$(VENV)/bin/ruff format dbos_async tests benchmarks examples
	$(VENV)/bin/ruff check --fix .

type: $(STAMP)
	$(VENV)/bin/mypy

# BENCH_ARGS passes runner options, e.g. make bench-compare BENCH_ARGS="--quick".
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

bench-compare: $(BENCH_STAMP)
	bash benchmarks/setup_baseline.sh
	$(PY) -m benchmarks.run --compare $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-dbos .pytest_cache .mypy_cache dist build
