# The two commands of the README, and a few helpers. Everything runs inside ./.venv.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL = 3

PYTEST_ARGS = --nbval --nbval-sanitize-with tests/sanitize.cfg --nbval-cell-timeout=600 \
              --doctest-modules --durations=10

.PHONY: install book student test test-jax lab notebooks format results bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	touch $@

## make book: install everything, build the HTML book into _build/html (warnings are errors)
book: install
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Open _build/html/index.html"

## make student: build the student edition (exercises, no solutions) into _build/student/_build/html.
## It is the same _config.yml with hide_solutions set to true, written to _build/student/_config.yml
## (the local extension's folder made absolute, since it is found relative to the config file).
student: install
	mkdir -p _build/student
	sed -e 's/^\(    hide_solutions:\) false$$/\1 true/' -e 's|^\(    student_edition:\) book/_ext$$|\1 $(CURDIR)/book/_ext|' \
	  _config.yml > _build/student/_config.yml
	grep -q '^    hide_solutions: true$$' _build/student/_config.yml
	$(BIN)/jupyter-book build . --config _build/student/_config.yml --path-output _build/student -W -n --keep-going
	@echo "Open _build/student/_build/html/index.html"

## make test: install everything, run unit tests, doctests, every notebook (nbval) and the book build test
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

## make test-jax: the unit tests of the modules whose maths is backend-neutral (activations, attention, crf,
## losses, optimizers) under KERAS_BACKEND=jax. JAX goes into its own venv, .venv-jax, which sees .venv's
## packages through a .pth file (no second copy of TensorFlow); TensorFlow-only tests skip with a reason.
JAX_VENV  ?= .venv-jax
JAX_TESTS  = tests/test_activations.py tests/test_attention.py tests/test_crf.py tests/test_losses.py \
             tests/test_optimizers.py tests/test_bad_inputs.py

$(JAX_VENV)/.installed: requirements-jax.txt $(VENV)/.installed
	test -x $(JAX_VENV)/bin/python || $(PYTHON) -m venv $(JAX_VENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(JAX_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/base-venv.pth"
	$(JAX_VENV)/bin/python -m pip install -r requirements-jax.txt
	touch $@

test-jax: $(JAX_VENV)/.installed
	KERAS_BACKEND=jax JAX_ENABLE_X64=1 $(JAX_VENV)/bin/python -m pytest -p no:cacheprovider --durations=5 $(JAX_TESTS)

## make lab: open the chapters in JupyterLab
lab: install
	$(BIN)/jupyter lab book

## make notebooks: re-execute every chapter in place at quick scale (after changing lib or a chapter)
notebooks: install
	for nb in book/*/*.ipynb; do \
	  (cd $$(dirname $$nb) && $(CURDIR)/$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	     --ExecutePreprocessor.timeout=600 $$(basename $$nb)) || exit 1; \
	done

## make format: format every chapter's code cells to 88 characters, the width of the page's column
## (tests/test_book.py checks the width; comments and long strings are wrapped by hand)
format: install
	$(BIN)/ruff format --line-length 88 book/*/*.ipynb

## make results: run the reference scale of every chapter that has one, one after the other, resuming
## interrupted runs (tens of minutes each on 2 cores); `make results CHAPTER=crf-memm` runs one chapter
CHAPTER ?= $(shell $(BIN)/python -c "from lib.experiments import CHAPTERS; print(' '.join(CHAPTERS))" 2>/dev/null)
results: install
	for chapter in $(CHAPTER); do $(BIN)/python -m lib.experiments $$chapter --scale reference --resume || exit 1; done

## make bench: run every benchmark script (installs the benchmarks' own extras first)
bench: install
	$(BIN)/python -m pip install -q -r benchmarks/requirements.txt
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf _build .jupyter_cache $(JAX_VENV)
