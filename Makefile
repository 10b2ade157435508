# Two commands on a fresh machine: `make demo` (the main job on the embedded model) and `make test`.
# Both set up .venv first, only when it is missing or older than pyproject.toml.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup browser demo test test-fast lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# uv installs what pip would (the same resolution), several times faster: torch and jax are large.
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[test]"
	touch $(STAMP)

# The real-browser test (tests/test_serve_browser.py) drives Debian's chromium, installed here when missing.
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# Segments the bundled sample image with the embedded tiny-shapes model -> demo-output/.
demo: setup
	$(PY) -m sam_jax.demo --output demo-output

# Everything, slow tests included (CI runs this). Two workers: one test at a time leaves a
# core idle while Python traces; more would need more memory than a small machine has.
test: setup browser lint
	$(PY) -m pytest -n 2 --dist worksteal --durations=15

# Skips the tests marked slow (full-size vit_b / vit_h); for quick local iterations only.
test-fast: setup
	$(PY) -m pytest -n 2 --dist worksteal -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
