# tenement — `make demo` and `make test` work on a fresh Debian machine with Rust installed.
SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the build needs (cmake: Pingora's zlib-ng; curl: handy for the demo): all
# that `make build` and `make demo` install.
BUILD_APT := cmake gcc g++ make pkg-config curl
# What `make test` needs on top (nginx: the nginx migration test; chromium and chromium-driver:
# the dashboard's browser test, driven over WebDriver from Rust; no Node; prometheus: promtool
# and a real Prometheus for the metrics tests; pebble: Let's Encrypt's test ACME server and its
# DNS, for the ACME test in tests/e2e/tls.rs; postgresql: the fleet's shared-store tests start a
# private cluster).
TEST_APT := nginx-light chromium chromium-driver prometheus pebble postgresql

# $(call apt_install,PACKAGES): install those of PACKAGES that are missing.
define apt_install
@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq $$missing; \
	fi
endef

.PHONY: all deps test-deps build demo test lint fmt ci bench clean

all: build

deps:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
	$(call apt_install,$(BUILD_APT))

test-deps: deps
	$(call apt_install,$(TEST_APT))

build: deps
	$(CARGO) build --release --bins

# Build, then run `ten serve` on the demo config with the demo app (two instances of "hello").
demo: build
	@./target/release/ten config check examples/demo/tenement.toml
	@echo
	@echo "ten is starting on 127.0.0.1:8080 (Ctrl-C to stop). In another terminal, try:"
	@echo "  curl -H 'Host: prod.hello.localhost' localhost:8080/        # one instance"
	@echo "  curl -H 'Host: canary.hello.localhost' localhost:8080/      # the other"
	@echo "  curl -H 'Host: hello.localhost' localhost:8080/             # weighted across both"
	@echo "  curl -H 'Host: localhost' localhost:8080/health             # management"
	@echo
	PATH="$(CURDIR)/target/release:$$PATH" exec ./target/release/ten serve --config examples/demo/tenement.toml

# Every test: unit tests of each crate and the end-to-end tests of the real binary. Benchmarks
# (harness = false) are not tests: `make bench` runs them.
test: test-deps
	$(CARGO) test --workspace --lib --bins --tests

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

ci: test lint

clean:
	$(CARGO) clean

# Benchmarks, never part of `make test` (docs/benchmarks.md): ten vs nginx vs a vanilla Pingora
# proxy vs direct in one run, then the routing micro-benchmarks; writes BENCHMARKS.md.
# `make bench BENCH_ARGS="--rounds 5"` passes options to benches/run.sh (--help lists them).
# Tools: the build's packages, wrk, nginx (the upstream and the peer), valgrind (callgrind) and
# python3 (the driver) from Debian; oha (fixed-rate latency) from crates.io at a fixed version,
# kept in ~/.cargo/bin. (Not `test-deps`: the benchmarks need no browser.)
# HAProxy and Caddy (Debian) run beside nginx as peers; perf counts system calls (strace if perf
# has no tracepoints). `make bench PEERS=all` also builds pingap at a fixed version once
# (benches/peers.sh, cached in ~/.cache) and runs it too.
BENCH_APT := cmake gcc g++ make pkg-config wrk nginx-light haproxy caddy linux-perf strace valgrind python3 openssl
PEERS ?=
OHA_VERSION := 1.16.0
BENCH_ARGS ?=

.PHONY: bench-deps
bench-deps:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
	@missing=""; for p in $(BENCH_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq $$missing; \
	fi
	@if ! "$$HOME/.cargo/bin/oha" --version 2>/dev/null | grep -qx "oha $(OHA_VERSION)"; then \
		$(CARGO) install oha --version $(OHA_VERSION) --locked; \
	fi

# Everything builds with the `profiling` profile (release + debug info, Cargo.toml) so callgrind
# keeps function names; the shipped release binary has none.
bench: bench-deps
	$(CARGO) build --profile profiling --bins
	$(CARGO) bench --profile profiling -p tenement-proxy --bench routing --no-run
	$(if $(filter all,$(PEERS)),benches/peers.sh)
	benches/run.sh $(if $(filter all,$(PEERS)),--peers all) $(BENCH_ARGS)
	@# Scenario measurements and the log store, appended to the same report (same session).
	$(CARGO) bench --profile profiling --bench scenarios 2>/dev/null >> BENCHMARKS.md
	$(CARGO) bench --profile profiling --bench logstore 2>/dev/null >> BENCHMARKS.md
	$(CARGO) bench --profile profiling --bench tables 2>/dev/null >> BENCHMARKS.md
	$(CARGO) bench --profile profiling --bench fleet 2>/dev/null >> BENCHMARKS.md

# The Debian package (docs: README, "Install as a Debian package"): `ten`, tenement.service, the
# default /etc/tenement/tenement.toml (a conffile), the tenement user (postinst), and the shell
# completions and man page, written by the built `ten` itself (hidden `ten completions SHELL` /
# `ten man`, from its clap definitions) into target/release/gen/ before cargo-deb packs them.
# cargo-deb comes from crates.io at a fixed version, kept in ~/.cargo/bin. Output:
# target/debian/tenement_VERSION-1_ARCH.deb. `make deb-test` (CI) installs it, checks it and
# removes it (packaging/deb-test.sh; it refuses to run where tenement is already installed).
CARGO_DEB_VERSION := 3.8.0
DEB_TARGET = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
DEB_GEN = $(DEB_TARGET)/release/gen

.PHONY: deb deb-test
deb:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
	@# dpkg-dev: dpkg-shlibdeps, which cargo-deb uses to compute the package's Depends.
	$(call apt_install,dpkg-dev)
	@if ! "$$HOME/.cargo/bin/cargo-deb" --version 2>/dev/null | grep -q " $(CARGO_DEB_VERSION)$$"; then \
		$(CARGO) install cargo-deb --version $(CARGO_DEB_VERSION) --locked; \
	fi
	$(CARGO) build --release --bin ten
	@mkdir -p $(DEB_GEN)
	$(DEB_TARGET)/release/ten completions bash > $(DEB_GEN)/ten.bash
	$(DEB_TARGET)/release/ten completions zsh > $(DEB_GEN)/_ten
	$(DEB_TARGET)/release/ten completions fish > $(DEB_GEN)/ten.fish
	$(DEB_TARGET)/release/ten man | gzip -9n > $(DEB_GEN)/ten.1.gz
	"$$HOME/.cargo/bin/cargo-deb" --no-build -p tenement

deb-test: deb
	packaging/deb-test.sh "$$(ls -t $(DEB_TARGET)/debian/tenement_*.deb | head -1)"
