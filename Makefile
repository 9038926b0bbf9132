# Entry points: `make run` (one node on the embedded defaults), `make test` (everything),
# `make bench` (side-by-side benchmarks against Kamailio, rtpengine and keepalived). Each installs the Debian
# packages it needs when they are missing.

SHELL := /bin/bash
export CARGO_INCREMENTAL := 0
# Link RocksDB and jemalloc from Debian's packages instead of building bundled C/C++.
export ROCKSDB_LIB_DIR ?= /usr/lib/$(shell uname -m)-linux-gnu
export JEMALLOC_OVERRIDE ?= /usr/lib/$(shell uname -m)-linux-gnu/libjemalloc.a
export CARGO_TARGET_DIR ?= $(CURDIR)/target
BIN := $(CARGO_TARGET_DIR)/release
export SOFTSWITCH_BIN := $(BIN)/softswitch
export SWITCHCTL_BIN := $(BIN)/switchctl

BUILD_PKGS := librocksdb-dev libjemalloc-dev libclang-dev pkg-config gcc
TEST_PKGS := sip-tester baresip-core iproute2 tcpdump procps prometheus
BENCH_PKGS := sip-tester kamailio procps time iproute2 rtpengine-daemon util-linux keepalived
# The DPDK relay backend (cargo feature `dpdk`): only its test, lint and bench need it.
DPDK_PKGS := dpdk-dev libdpdk-dev
# The relay's in-kernel fast path (TC BPF): its root test and KERNEL=1 bench compile it.
KERNEL_PKGS := clang libbpf-dev iproute2
# Dashboards, alert rules and service units (ops/): promtool, PyYAML, systemd-analyze.
OPS_PKGS := prometheus python3-yaml systemd

# Installs the named Debian packages that are not installed yet (apt-get update once).
define apt_ensure
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -ne 0 ] && sudo=sudo; \
	  echo "installing:$$missing"; \
	  if [ ! -e /tmp/.softswitch-apt-updated ]; then $$sudo apt-get update -qq && touch /tmp/.softswitch-apt-updated; fi; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

.PHONY: run build test unit e2e lint dpdk kernel ops-check bench deps-build deps-test deps-bench deps-dpdk deps-kernel deps-ops clean

deps-build:
	$(call apt_ensure,$(BUILD_PKGS))

deps-test: deps-build
	$(call apt_ensure,$(TEST_PKGS))
	@python3 -c "import pjsua2" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check pjsua2-python

deps-bench: deps-build
	$(call apt_ensure,$(BENCH_PKGS))

deps-dpdk: deps-build
	$(call apt_ensure,$(DPDK_PKGS))

deps-kernel: deps-build
	$(call apt_ensure,$(KERNEL_PKGS))

deps-ops:
	$(call apt_ensure,$(OPS_PKGS))

build: deps-build
	cargo build --release -p node -p ops

run: build
	$(BIN)/softswitch

lint: deps-build deps-dpdk
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	cargo clippy --release -p media -p bench --features media/dpdk,bench/dpdk,media/kernel-fastpath --all-targets -- -D warnings

unit: deps-build
	cargo test --release --workspace --exclude tests

e2e: build deps-test
	cargo test --release -p tests -- --test-threads=2

# The kernel-bypass relay between two network namespaces, DPDK on a veth end through
# net_af_packet, then through net_af_xdp.
dpdk: deps-dpdk
	cargo test --release -p media --features dpdk --test dpdk_veth
	DPDK_VETH_VDEV=net_af_xdp0,iface=d0 cargo test --release -p media --features dpdk --test dpdk_veth

# The udp relay's in-kernel fast path on lo (root): TC classifier attached, both sides
# latched, RTP relayed by the kernel, counters and RTP timeout, back to user space on update.
kernel: deps-kernel
	cargo test --release -p media --features kernel-fastpath --test kernel_fastpath

# The Grafana dashboard and alert rules against the metric contract (ops/METRICS.md), the
# alert rules' unit tests, the example Prometheus configuration and the systemd units.
ops-check: deps-ops
	python3 ops/check_dashboard.py
	promtool check rules ops/prometheus/alerts.yml
	promtool test rules ops/prometheus/alerts_test.yml
	promtool check config ops/prometheus/prometheus.yml
	ops/systemd/verify.sh

test: lint unit dpdk kernel ops-check e2e

bench: build deps-bench deps-dpdk deps-kernel
	cargo build --release -p bench
	bench/run.sh
	@echo "# media relay: udp backend vs rtpengine (user space), relayed pps per core; goal >= 3 x"
	bench/rtp.sh
	@echo "# media relay with the in-kernel fast path vs rtpengine (user space), CPU 0 busy time per relayed packet (RPS on lo); goal >= 3 x"
	KERNEL=1 ACCOUNT=cpu0 bench/rtp.sh
	@echo "# raft: 3 members in one process, QUIC mTLS on loopback, synced RocksDB logs"
	$(BIN)/raft_commit
	@echo "# catch-up: a 4th member (learner) on 1 000 000 bindings, by snapshot; goal <= 10 s"
	$(BIN)/catchup
	@echo "# dpdk: relayed RTP packets per second per core, DPDK backend on net_ring virtual devices; goal >= 2 Mpps"
	cargo build --release -p bench --features dpdk --bin dpdk_relay
	$(BIN)/dpdk_relay
	@echo "# VIP failover: kill -9 + link down of the holder under registration and call load, vs keepalived (VRRP defaults) in the same namespaces; goals: median <= 500 ms, max <= 1 s, 0 registrations lost, >= 99 % of calls keep audio"
	bench/failover.sh

clean:
	cargo clean
