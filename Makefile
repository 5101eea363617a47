# The two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/setup.cfg)
PLUGIN_DIRS := $(patsubst %/setup.cfg,%,$(PLUGINS))
EDITABLES := -e . $(foreach d,$(PLUGIN_DIRS),-e $(d))

.PHONY: run test venv venv-test clean bench bench-quick soak clients

# A venv with the core and the bundled plugins; re-run pip only when a setup.cfg changes.
# The packages build with the venv's own setuptools and wheel (pyproject.toml's build requirements):
# without --no-build-isolation, pip fetches them again into a fresh environment for each package.
define make_venv
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q --no-build-isolation $(1)
endef

$(VENV)/.installed: setup.cfg pyproject.toml $(PLUGINS)
	$(call make_venv,$(EDITABLES))
	touch $@

# The test venv in one pip run, not the plain venv and then the extras: each editable install
# builds its package in an environment of its own, and a second run would build them all again.
# The Python client (clients/python) is its own distribution; its tests drive a real server.
$(VENV)/.installed-test: setup.cfg pyproject.toml $(PLUGINS) clients/python/pyproject.toml
	$(call make_venv,-e '.[test]' $(foreach d,$(PLUGIN_DIRS),-e '$(d)[test]') -e clients/python)
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

## make run: set up and start brain on its embedded defaults (auth :3000, API :8080, embedded NATS)
run: venv
	$(VENV)/bin/brain serve $(ARGS)

# The suite runs on pytest-xdist workers, one per core of CI's machine; more would overlap more of
# the time tests spend waiting on the processes they start, at the price of more CPU contention for
# the tests that time things. Each test file runs whole on one worker (--dist loadfile), so a
# module's shared server starts once.
TEST_WORKERS ?= 2

## make test: set up (with test extras) and run the whole suite (TEST_WORKERS=0: in one process)
# The 25 longest tests are listed at the end: the suite must stay well under 15 minutes on CI.
test: venv-test
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

## make soak: the long reliability runs (tests/soak: many kill -9 cycles, crash and fault storms, fuzzing; ~5 min)
soak: venv-test
	$(PY) -m pytest -m soak tests/soak $(PYTEST_ARGS)

## make bench: benchmarks of the real server beside bare-aiohttp baselines (a few minutes; needs wrk)
bench: venv-test
	$(PY) -m bench $(BENCH_ARGS)

## make bench-quick: the same measurements, shorter (under a minute)
bench-quick: venv-test
	$(PY) -m bench --quick $(BENCH_ARGS)

## make clients: regenerate clients/openapi.json, clients/asyncapi.json and both clients' types from the routes (needs node)
clients: venv-test
	cd clients/typescript && npm ci --no-audit --no-fund
	$(PY) clients/generate.py

clean:
	rm -rf $(VENV) .pytest_cache
