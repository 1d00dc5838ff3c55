# Nitro: `make run` starts the server on the embedded default with the runtime dependencies only;
# `make test` installs what the suite needs too (pytest, slixmpp, ruff, mypy, …) and runs it.
# Everything lives in .venv; system packages only for the Debian client, MariaDB and Redis tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/nitro.toml
RUNTIME := $(VENV)/.runtime-installed
DEV     := $(VENV)/.dev-installed

.PHONY: run check test lint bench system-deps web-client clean

# The runtime install: the same commands the Dockerfile runs (tests/test_packaging.py compares them).
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# The test and lint tools on top (the `dev` extra of pyproject.toml).
$(DEV): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(RUNTIME) web-client
	$(BIN)/nitro --config $(CONFIG) serve

# What would stop or weaken a start: config, certificates, storage, Redis, ports (see the README).
check: $(RUNTIME)
	$(BIN)/nitro --config $(CONFIG) check

# The web client served at http://127.0.0.1:5280/: Converse.js from the npm registry (`npm pack` checks the
# tarball against the registry's checksum), unpacked into var/web/converse.js. Not committed.
CONVERSE_VERSION := 14.0.0
WEB_CLIENT_DIR   := var/web/converse.js

web-client: $(WEB_CLIENT_DIR)/.installed-$(CONVERSE_VERSION)

$(WEB_CLIENT_DIR)/.installed-$(CONVERSE_VERSION):
	@if ! command -v npm >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; \
	  else echo "note: install npm (Debian package) for the web client; / answers 503 until then"; exit 0; fi; \
	fi; \
	set -e; rm -rf $(WEB_CLIENT_DIR) var/web/converse.js-*.tgz; mkdir -p $(WEB_CLIENT_DIR); \
	cd var/web && npm pack --silent converse.js@$(CONVERSE_VERSION) >/dev/null && cd ../..; \
	tar xzf var/web/converse.js-$(CONVERSE_VERSION).tgz -C $(WEB_CLIENT_DIR) --strip-components=1 \
	  --wildcards 'package/dist/*' 'package/LICENSE*' package/package.json; \
	rm var/web/converse.js-$(CONVERSE_VERSION).tgz; \
	touch $@

# go-sendxmpp is the real Debian client one end-to-end test drives; MariaDB's server and client run the
# SQL backend tests; redis-server is what the ring tests start (three of them on free ports). All are
# installed when we are root.
system-deps:
	@command -v go-sendxmpp >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq go-sendxmpp >/dev/null; \
	  else echo "note: install go-sendxmpp (Debian package) to run the real-client test"; fi; }
	@# MariaDB: the storage tests use the server on 127.0.0.1:3306; the fault test runs its own mariadbd.
	@{ command -v mariadbd || test -x /usr/sbin/mariadbd; } >/dev/null 2>&1 && command -v mariadb-install-db >/dev/null 2>&1 \
	  && command -v mariadb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null; \
	  else echo "note: install mariadb-server and mariadb-client (Debian packages) for the MariaDB tests"; fi; }
	@mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; sleep 3; \
	  else echo "note: start MariaDB on 127.0.0.1:3306 (root, no password) for the MariaDB tests"; fi; }
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "note: install redis-server (Debian package) to run the Redis ring tests"; fi; }
	@# nats-server: the cluster tests start their own (tests/nats_servers.py, integration/nats_servers.py).
	@{ command -v nats-server || test -x /usr/sbin/nats-server; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; \
	  else echo "note: install nats-server (Debian package) to run the cluster tests"; fi; }
	@# Debian's Chromium and its WebDriver: the browser test loads the web client in it (tests/test_browser.py).
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "note: install chromium and chromium-driver (Debian packages) to run the browser test"; fi; }

test: $(DEV) system-deps web-client
	$(BIN)/python -m pytest

lint: $(DEV)
	$(BIN)/ruff format --check nitro tests integration plugins
	$(BIN)/ruff check nitro tests integration plugins
	$(BIN)/mypy

# The load generator against Prosody, ejabberd and Nitro side by side, each pinned to the same core
# (installs Debian's prosody and ejabberd when root). Prints a table; never fails on slow figures.
# Narrow it with e.g. BENCH_ARGS='--scenario chat'.
bench: $(DEV)
	$(BIN)/python -m integration.bench --compare-prosody --compare-ejabberd $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
