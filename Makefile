# Two entry points for a fresh machine:
#   make study   set up the environment and render every notebook end to end with papermill
#   make test    set up the environment and run lint, the store check, unit tests, nbval on perturbed
#                inputs (every notebook, reading the store) and the retrain check
VENV ?= .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
# Progress bars refresh at most every 30 s, so rendered notebooks and CI logs stay short.
export TQDM_MININTERVAL ?= 30
# Extra papermill parameters, e.g. make study PARAMS="-p device cuda -p scale 4"
PARAMS ?=
# Trained SAEs live in the committed store results/saes/ (lib/experiments/store.py): `make study` trains only
# what is missing there, `make study RETRAIN=1` retrains everything and reports what changed, and
# `make test` never trains (a missing stored run is an error naming it).
RETRAIN ?= 0
STUDY_STORE := $(if $(filter 1,$(RETRAIN)),retrain,train)
# The perturbation test: every tensor read from the store multiplied by 1 + PERTURB * N(0, 1).
PERTURB ?= 1e-6
# nbval's limit per notebook cell (s): the longest default cell takes ~10 min on 2 idle cores;
# the margin covers a loaded machine.
NBVAL_CELL_TIMEOUT ?= 3600
# What nbval checks (e.g. one notebook: make nbval NBVAL_PATHS=notebooks/01_toy_correlated_features.ipynb).
NBVAL_PATHS ?= $(NOTEBOOKS:.py=.ipynb)

# Pinned numerics (lib/core/numerics.env, the one definition): every command below runs with the same
# CPU kernels and thread counts, so any x86-64 CPU with AVX2 reproduces the committed numbers to the
# bit, and setup() refuses to run without them (SAE_STUDY_STRICT_NUMERICS). They are defined for
# x86-64 only; elsewhere, or with PIN_NUMERICS=0 (e.g. at paper scale on a GPU machine), the
# libraries choose their own kernels and setup() warns that results agree only statistically.
PIN_NUMERICS ?= $(if $(filter x86_64 amd64,$(shell uname -m)),1,0)
ifeq ($(PIN_NUMERICS),1)
include lib/core/numerics.env
export $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' lib/core/numerics.env)
export SAE_STUDY_STRICT_NUMERICS := 1
endif

RENDERS := $(NOTEBOOKS:.py=.render)
.PHONY: setup study test lint unit nbval nbval-perturbed retrain-check store-check numerics clean $(RENDERS)

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml lib/core/numerics.env
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	# editable install: `import sae_ortho` (the folder lib/) works from notebooks/ (papermill, nbval kernels, Jupyter)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# the Jupyter kernel of this environment starts with the pinned numerics
	$(PY) -m sae_ortho.core.numerics --install-kernel $(VENV)
	touch $@

# After the renders, the README's findings section is regenerated from results/findings_*.md.
study: setup $(RENDERS)
	$(PY) -m sae_ortho.reporting.report
	$(PY) -m sae_ortho.experiments.store --verify --report

# Render one notebook: fresh inputs from the .py source -> papermill -> strip volatile metadata
# -> replace the committed .ipynb only when the run succeeded.
$(RENDERS): notebooks/%.render: notebooks/%.py | setup
	$(VENV)/bin/jupytext --to ipynb --output notebooks/$*.in.tmp.ipynb $<
	SAE_STUDY_STORE=$(STUDY_STORE) $(VENV)/bin/papermill notebooks/$*.in.tmp.ipynb notebooks/$*.out.tmp.ipynb --cwd notebooks $(PARAMS)
	$(VENV)/bin/nbstripout --keep-output --keep-count --extra-keys "metadata.papermill cell.metadata.papermill cell.metadata.execution" notebooks/$*.out.tmp.ipynb
	mv notebooks/$*.out.tmp.ipynb notebooks/$*.ipynb
	rm -f notebooks/$*.in.tmp.ipynb
	$(VENV)/bin/jupytext --to ipynb --update $<

lint: setup
	$(VENV)/bin/ruff check lib tests notebooks

unit: setup
	$(VENV)/bin/python -m pytest -q tests --ignore=tests/after_nbval

# The committed notebooks were rendered offline (the SmolLM2 stand-in); validate them the same way,
# so a machine that can reach the Hugging Face hub does not compare Pythia numbers with them.
# Figures and result tables go to a temporary folder: the committed ones stay byte-identical.
# The store is read, never written (SAE_STUDY_STORE=require).
NBVAL = HF_HUB_OFFLINE=1 SAE_STUDY_STORE=require SAE_STUDY_OUTPUT="$$out" $(VENV)/bin/python -m pytest -q \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg
nbval: setup
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; $(NBVAL) $(NBVAL_PATHS)

# The perturbation test: the same checked cells with every stored tensor perturbed by PERTURB
# (relative), what another CPU's rounding does; no checked output may move.
nbval-perturbed: setup
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; SAE_STUDY_PERTURB=$(PERTURB) $(NBVAL) $(NBVAL_PATHS)

# Retrain a sample of stored runs from scratch and compare (tests/after_nbval: needs the
# activation cache that nbval's notebook 02 harvested).
retrain-check: setup
	HF_HUB_OFFLINE=1 SAE_STUDY_STORE=require $(VENV)/bin/python -m pytest -q tests/after_nbval

store-check: setup
	$(PY) -m sae_ortho.experiments.store --verify

# nbval checks every notebook's checked cells against the committed render, reading the store, on
# perturbed inputs: what passes there passes on any CPU (`make nbval` is the unperturbed run).
test: lint store-check unit nbval-perturbed retrain-check

# Which kernels this machine runs under the Makefile's settings, and what pinning costs here.
numerics: setup
	$(PY) -m sae_ortho.core.numerics --check
	$(PY) -m sae_ortho.bench.numerics --bench --out results/numerics_bench.md

clean:
	rm -rf $(VENV) notebooks/*.tmp.ipynb
