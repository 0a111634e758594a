# Two commands do all the set-up on a fresh machine with Python 3.11, git and make:
#   make demo   -- the end-to-end story on the embedded default (SQLite, bundled data, real TLS server)
#   make test   -- the whole test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install browser protos bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) demo/run_demo.py

# Debian's chromium and chromium-driver for the console's browser test (installed only when missing).
browser:
	bash scripts/install_browser.sh

test: $(STAMP) browser
	$(PY) -m pytest -q

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

bench: $(STAMP)
	$(PY) benchmarks/bench_signed_rpc.py
	$(PY) benchmarks/bench_dp_query.py
	$(PY) benchmarks/bench_dp_timing.py
	$(PY) benchmarks/bench_he_scoring.py
	$(PY) benchmarks/bench_verification.py
	$(PY) benchmarks/bench_fl_training.py
	$(PY) benchmarks/bench_state.py
	$(PY) benchmarks/bench_import.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
