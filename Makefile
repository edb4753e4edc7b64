# BiasLens: `make run` and `make test` each do all set-up on a fresh machine.
PY_SYS ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
ADDRESS ?= 127.0.0.1
# Streamlit's settings for a public server: no file watcher, no usage stats, no uploads,
# XSRF protection on, no tracebacks shown to visitors.
SERVE_FLAGS := --server.headless=true --server.address=$(ADDRESS) --server.port=$(PORT) \
	--server.fileWatcherType=none --server.runOnSave=false --browser.gatherUsageStats=false \
	--server.maxUploadSize=0 --server.enableXsrfProtection=true --server.enableCORS=true \
	--client.showErrorDetails=none --client.toolbarMode=viewer
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: run prepare serve test setup venv demo-data browser lint bench clean

setup: $(STAMP) demo-data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,scale]'
	rm -f $(VENV)/.installed-*
	touch $@

# Fashion-MNIST for the planted-bias demo: Debian's package when apt is usable,
# else whatever core/demo/fashion.py finds (a copy in cache/ or a download).
demo-data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

# Debian's Chromium for the e2e tests (never `playwright install`).
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

run: setup
	$(PY) -m streamlit run app.py --server.port=$(PORT)

# The hosted demo: `make prepare` has the CLI prepare what visitors cannot start (the demo's
# store, saliency profiles, default probes and layout, and the control model's store for
# Compare; each step a no-op once done), then `make serve` runs the app in hosted mode.
# `make serve ADDRESS=0.0.0.0 PORT=80` to listen publicly.
prepare: setup
	BIASLENS_HOSTED=1 $(PY) -m core prepare demo
	BIASLENS_HOSTED=1 $(PY) -m core prepare demo-control --only store

serve: prepare
	BIASLENS_HOSTED=1 $(PY) -m streamlit run app.py $(SERVE_FLAGS)

test: setup browser
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

bench: setup
	$(PY) bench/demo.py
	$(PY) bench/extract.py

clean:
	rm -rf cache/stores
