# The two commands of the README. Each sets up what is missing on first use:
# a virtual environment in .venv with the package and its test extras, and (for the
# tests) the Debian tools that validate the deployment files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test tools clean

demo: $(STAMP)
	$(BIN)/retention demo

# Two test processes (this machine has 2 cores); a module's tests stay in one process, so
# module fixtures (an uninterrupted reference run) are built once.
test: $(STAMP) tools
	$(BIN)/python -m pytest -n 2 --dist loadfile

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

tools:
	@scripts/install-tools

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
