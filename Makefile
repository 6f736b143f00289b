# The two commands of the README. Each sets up what is missing on first use:
# a virtual environment in .venv with the package and its test extras, and (for the
# tests) the Debian tools that validate the deployment files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The stamp names the Python it was built with: another PYTHON (or a .venv left by an
# interpreter that failed) rebuilds the environment instead of reusing it.
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
STAMP  := $(VENV)/.installed-py$(PYVER)

.PHONY: demo test tools clean

demo: $(STAMP)
	$(BIN)/retention demo

# Two test processes (this machine has 2 cores); a module's tests stay in one process, so
# module fixtures (an uninterrupted reference run) are built once.
test: $(STAMP) tools
	$(BIN)/python -m pytest -n 2 --dist loadfile

$(STAMP): pyproject.toml
	@test -n "$(PYVER)" || { echo "$(PYTHON) does not run: set PYTHON=python3.11 (3.11 to 3.13)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else "Python 3.11 to 3.13 is needed, $(PYTHON) is $(PYVER) (set PYTHON=...)")'
	@built="$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"; \
	if [ -e $(VENV) ] && [ "$$built" != "$(PYVER)" ]; then \
		echo "$(VENV) was built with Python $${built:-(none that runs)}; rebuilding it with $(PYTHON) ($(PYVER))"; rm -rf $(VENV); fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed $(VENV)/.installed-py*
	@touch $@

tools:
	@scripts/install-tools

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
