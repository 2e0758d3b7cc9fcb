# Two entry points for a fresh machine:
#   make study   set up the environment and render every notebook end to end with papermill
#   make test    set up the environment and run lint, unit tests, the pairing gate and nbval
VENV ?= .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
# Progress bars refresh at most every 30 s, so rendered notebooks and CI logs stay short.
export TQDM_MININTERVAL ?= 30
# Extra papermill parameters, e.g. make study PARAMS="-p device cuda -p scale 4"
PARAMS ?=
# nbval's limit per notebook cell (s): the longest default cell takes ~10 min on 2 idle cores;
# the margin covers a loaded machine.
NBVAL_CELL_TIMEOUT ?= 3600

# Pinned numerics (lib/numerics.env, the one definition): every command below runs with the same
# CPU kernels and thread counts, so any x86-64 CPU with AVX2 reproduces the committed numbers to the
# bit, and setup() refuses to run without them (SAE_STUDY_STRICT_NUMERICS). They are defined for
# x86-64 only; elsewhere, or with PIN_NUMERICS=0 (e.g. at paper scale on a GPU machine), the
# libraries choose their own kernels and setup() warns that results agree only statistically.
PIN_NUMERICS ?= $(if $(filter x86_64 amd64,$(shell uname -m)),1,0)
ifeq ($(PIN_NUMERICS),1)
include lib/numerics.env
export $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' lib/numerics.env)
export SAE_STUDY_STRICT_NUMERICS := 1
endif

RENDERS := $(NOTEBOOKS:.py=.render)
.PHONY: setup study test lint unit nbval numerics clean $(RENDERS)

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml lib/numerics.env
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	# editable install: `import lib` works from notebooks/ (papermill, nbval kernels, Jupyter)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# the Jupyter kernel of this environment starts with the pinned numerics
	$(PY) -m lib.numerics --install-kernel $(VENV)
	touch $@

# After the renders, the README's findings section is regenerated from results/findings_*.md.
study: setup $(RENDERS)
	$(PY) -m lib.report

# Render one notebook: fresh inputs from the .py source -> papermill -> strip volatile metadata
# -> replace the committed .ipynb only when the run succeeded.
$(RENDERS): notebooks/%.render: notebooks/%.py | setup
	$(VENV)/bin/jupytext --to ipynb --output notebooks/$*.in.tmp.ipynb $<
	$(VENV)/bin/papermill notebooks/$*.in.tmp.ipynb notebooks/$*.out.tmp.ipynb --cwd notebooks $(PARAMS)
	$(VENV)/bin/nbstripout --keep-output --keep-count --extra-keys "metadata.papermill cell.metadata.papermill cell.metadata.execution" notebooks/$*.out.tmp.ipynb
	mv notebooks/$*.out.tmp.ipynb notebooks/$*.ipynb
	rm -f notebooks/$*.in.tmp.ipynb
	$(VENV)/bin/jupytext --to ipynb --update $<

lint: setup
	$(VENV)/bin/ruff check lib tests notebooks

unit: setup
	$(VENV)/bin/python -m pytest -q tests

# The committed notebooks were rendered offline (the SmolLM2 stand-in); validate them the same way,
# so a machine that can reach the Hugging Face hub does not compare Pythia numbers with them.
# Figures and result tables go to a temporary folder: the committed ones stay byte-identical.
nbval: setup
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	HF_HUB_OFFLINE=1 SAE_STUDY_OUTPUT="$$out" $(VENV)/bin/python -m pytest -q --nbval-lax --nbval-current-env \
	  --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/

test: lint unit nbval

# Which kernels this machine runs under the Makefile's settings, and what pinning costs here.
numerics: setup
	$(PY) -m lib.numerics --check
	$(PY) -m lib.numerics --bench --out results/numerics_bench.md

clean:
	rm -rf $(VENV) notebooks/*.tmp.ipynb
