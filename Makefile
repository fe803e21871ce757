# The two commands of README.md: `make demo` and `make test`.
# Both create .venv if missing and install the pinned set (requirements/constraints.txt).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIN    := requirements/constraints.txt
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(PIN)

DEMO_ARGS   ?=
PYTEST_ARGS ?=

.PHONY: demo test lint-imports clean-venv

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ns-bluesky needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: $(BIN)/python pyproject.toml $(PIN)
	$(PIP) -e '.[fftw]'
	@touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) -e '.[test]'
	@touch $@

## the main job: a simulated streaming-ptychography scan end to end on the embedded defaults
demo: $(VENV)/.core
	$(BIN)/ns-bluesky demo $(DEMO_ARGS)

## the import contracts of pyproject.toml ([tool.importlinter])
lint-imports: $(VENV)/.test
	@$(BIN)/lint-imports

## the whole test suite, after the import contracts; pytest's "no tests collected" (exit 5) is a failure
test: lint-imports
	@QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)
