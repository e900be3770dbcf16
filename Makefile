# The two commands in the README do all set-up on a fresh machine.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8501
# test processes (pytest-xdist): most tests wait on the processes they start, so two keep two cores busy; measured
# on 2 cores: 1,086 s of pytest with one, 648 s with two, 630 s with three; `make test TEST_WORKERS=1` for one
TEST_WORKERS ?= 2

.PHONY: run test lint setup browser postgres clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium for the browser test; skipped quietly where apt-get cannot run.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: chromium not installed; the browser test will be skipped"; }

# Debian's PostgreSQL for the search test against a real server (the test starts its own); skipped quietly
# where apt-get cannot run.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	  echo "note: postgresql not installed; the PostgreSQL search test will be skipped"; }

run: setup
	$(PY) -m streamlit run app.py --server.address localhost --server.port $(PORT)

# ruff, and the plan of core/ (pyproject.toml's import contracts): seconds, and they name the line
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# then, on a CPU with AVX-512, the tests marked `kernels` again, as an AVX2-only CPU (an AMD EPYC before Zen 4, most
# laptops) runs them: oneDNN and ATen pick their kernels by ISA, and a kernel that hangs on one never runs on the
# other (issue 18). A CPU without AVX-512 ran AVX2's kernels (or its only ones) in the first pass already.
test: lint browser postgres
	$(PY) -m pytest -n $(TEST_WORKERS)
	@if $(PY) -c "import sys, torch; sys.exit(torch.backends.cpu.get_cpu_capability() != 'AVX512')"; then \
	  set -x; ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
	    $(PY) -m pytest -m kernels -p no:cacheprovider -n $(TEST_WORKERS); \
	else echo "note: no AVX-512 on this CPU: its kernels are AVX2's or fewer, which the tests above ran"; fi

clean:
	rm -rf $(VENV) .pytest_cache
