# The two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/setup.cfg)
PLUGIN_DIRS := $(patsubst %/setup.cfg,%,$(PLUGINS))
EDITABLES := -e . $(foreach d,$(PLUGIN_DIRS),-e $(d))

.PHONY: run test venv venv-test clean bench bench-quick soak

# A venv with the core and the bundled plugins; re-run pip only when a setup.cfg changes.
$(VENV)/.installed: setup.cfg pyproject.toml $(PLUGINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(EDITABLES)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]' $(foreach d,$(PLUGIN_DIRS),-e '$(d)[test]')
	touch $@

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

## make run: set up and start brain on its embedded defaults (auth :3000, API :8080, embedded NATS)
run: venv
	$(VENV)/bin/brain serve $(ARGS)

## make test: set up (with test extras) and run the whole suite
test: venv-test
	$(PY) -m pytest $(PYTEST_ARGS)

## make soak: the long reliability runs (tests/soak: many kill -9 cycles, crash and fault storms, fuzzing; ~5 min)
soak: venv-test
	$(PY) -m pytest -m soak tests/soak $(PYTEST_ARGS)

## make bench: benchmarks of the real server beside bare-aiohttp baselines (a few minutes; needs wrk)
bench: venv-test
	$(PY) -m bench $(BENCH_ARGS)

## make bench-quick: the same measurements, shorter (under a minute)
bench-quick: venv-test
	$(PY) -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
