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

RENDERS := $(NOTEBOOKS:.py=.render)
.PHONY: setup study test lint unit nbval clean $(RENDERS)

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	# editable install: `import lib` works from notebooks/ (papermill, nbval kernels, Jupyter)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

study: setup $(RENDERS)

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
nbval: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/

test: lint unit nbval

clean:
	rm -rf $(VENV) notebooks/*.tmp.ipynb
