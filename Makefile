# weavewg: build, test, demo. Targets that touch namespaces need root.

GO           ?= go
BIN          ?= bin/weavewg
# The integration package took 19 min on the shared 2-core machine (load
# 10-40) with the qemu guest test still to come: 20m left no margin, and a
# timeout panics the whole package without cleanup.
TEST_TIMEOUT ?= 60m
FUZZTIME     ?= 10s

# The stamp `weavewg version` and status show. VERSION is git describe
# (a tag if there is one, else the short commit; -dirty for local changes);
# DATE honours SOURCE_DATE_EPOCH for reproducible builds.
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT       ?= $(shell git rev-parse HEAD 2>/dev/null)
DATE         ?= $(shell date -u -d @$${SOURCE_DATE_EPOCH:-$$(date +%s)} +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS      := -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
# release: one static binary per platform, with SHA256SUMS.
RELEASE_DIR       ?= dist
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64

# command:Debian package, for the tools the integration tests, the demo and
# the benchmark use. Installed only when the command is missing.
TOOLS := ip:iproute2 nft:nftables iptables:iptables tcpdump:tcpdump ping:iputils-ping \
         iperf3:iperf3 dockerd:docker.io busybox:busybox-static podman:podman \
         wg:wireguard-tools promtool:prometheus dig:bind9-dnsutils dnsperf:dnsperf \
         unshare:util-linux jq:jq systemd-analyze:systemd socat:socat \
         sysctl:procps curl:curl qemu-system-x86_64:qemu-system-x86 ldd:libc-bin \
         ufw:ufw

# The kernel WireGuard test (integration/vm_test.go) boots Debian's own
# kernel under qemu; deps unpacks linux-image-amd64's kernel package here
# (not installed: no boot loader or initramfs hooks run).
VM_KERNEL_DIR ?= /var/cache/weavewg-test/linux-image

.PHONY: all build release test unit integration deps demo bench bench-dns bench-scale bench-scale-sim bench-scale-ns fuzz vet clean

all: build

# build: a static binary (CGO_ENABLED=0: no libc, runs on any Linux) with
# the version stamped in.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/weavewg

release:
	@mkdir -p $(RELEASE_DIR)
	@set -e; for p in $(RELEASE_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; out=$(RELEASE_DIR)/weavewg-$(VERSION)-$$os-$$arch; \
		echo "make release: $$out"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o $$out ./cmd/weavewg; \
	done
	cd $(RELEASE_DIR) && sha256sum weavewg-$(VERSION)-* > SHA256SUMS

# deps installs the missing tools with apt-get (root only; without root the
# tests that need them skip and say why).
deps:
	@missing=""; \
	for pair in $(TOOLS); do \
		cmd=$${pair%%:*}; pkg=$${pair#*:}; \
		command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make deps: installing$$missing"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "make deps: missing$$missing; the tests that need them will skip"; \
	fi
	@if [ ! -d $(VM_KERNEL_DIR)/boot ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		pkg=$$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: //p' | head -n 1); \
		if [ -z "$$pkg" ]; then apt-get update -qq; \
			pkg=$$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: //p' | head -n 1); fi; \
		tmp=$$(mktemp -d); \
		if [ -n "$$pkg" ] && (cd $$tmp && apt-get download -qq $$pkg) && mkdir -p $(VM_KERNEL_DIR) && \
			dpkg-deb -x $$tmp/*.deb $(VM_KERNEL_DIR); then \
			echo "make deps: unpacked $$pkg into $(VM_KERNEL_DIR) for the kernel WireGuard VM test"; \
		else \
			echo "make deps: could not unpack Debian's kernel; the kernel WireGuard VM test will skip"; \
			rm -rf $(VM_KERNEL_DIR); \
		fi; \
		rm -rf $$tmp; \
	fi

# test runs every package's tests, fuzz seed corpora included: the unit
# tests under the race detector (then, without it, the allocation tests,
# which skip under it: sync.Pool drops items at random there), then the
# integration tests (which need root, /dev/net/tun and the tools above;
# they drive the daemon binary, so -race would add nothing there).
# -timeout is per package: ipam's, under the race detector, took 157-369 s
# before TestRmpeerAtScale (171 owners under -race, about 5 minutes at load
# 7) and passed 10 minutes with it on a loaded machine (November 30).
test: deps
	$(GO) test -race -count=1 -timeout 25m $$($(GO) list ./... | grep -v '/integration')
	$(GO) test -count=1 -run 'ZeroAllocs$$' ./tunnel/
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./integration/...

# unit: everything but the namespace tests.
unit:
	$(GO) test -count=1 -timeout 5m $$($(GO) list ./... | grep -v '/integration')

integration: deps
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./integration/...

vet:
	$(GO) vet ./...

# demo: three hosts with two containers each, status, ping matrix, teardown.
demo: build deps
	WEAVEWG_BIN=$(abspath $(BIN)) $(GO) run ./integration/cmd/demo $(DEMOFLAGS)

# bench: weavewg against the raw underlay and the reference wireguard-go
# (iperf3 TCP and ping; ratios c/a and c/b beside the targets, c/e against
# wireguard-go with the same container hops, t/w and u/v for the trusted
# VXLAN path against raw kernel VXLAN; BENCHFLAGS=--compare BIN
# measures another build in the same rounds); NAT
# traversal time; container TCP on 1460 and 1380 underlays as a ratio
# against 1500 in the same run (mtubench, target >= 0.8). deps installs
# iperf3 if it is missing. BENCHFLAGS=--json for scripts, --help for the rest.
bench: build deps
	WEAVEWG_BIN=$(abspath $(BIN)) $(GO) run ./integration/cmd/bench $(BENCHFLAGS)
	WEAVEWG_BIN=$(abspath $(BIN)) $(GO) run ./integration/cmd/natbench
	WEAVEWG_BIN=$(abspath $(BIN)) $(GO) run ./integration/cmd/mtubench
	$(MAKE) --no-print-directory bench-dns

# bench-dns: queries per second for weave.local names against one host's
# DNS server, from a container, beside a bare miekg/dns server on the same
# path (integration TestDNSThroughput; target >= 20,000 q/s on 2 cores).
bench-dns: deps
	WEAVEWG_BENCH_DNS=1 $(GO) test -count=1 -run '^TestDNSThroughput$$' -v ./integration/

# bench-scale: issue 18, in two halves that print one table each.
#   bench-scale-sim (owner: scale): N = 100, 300, 1,000 peers' control planes
#     (discovery, ipam, dns) in one process over an in-memory network
#     (package sim): a mesh of N-1 is built (-batch peers at a time, waiting
#     for agreement after each), then seconds until every peer agrees on
#     topology, IPAM ring and DNS after the N-th join, one more join, one
#     leave and a partition heal, and the frames and bytes that cost
#     (SIMBENCHFLAGS: -n 100,300 -batch 50 -burst -json; -burst adds N
#     peers launched together; -cpuprofile, -memprofile and -mutexprofile
#     FILE profile the run, -idleprofile FILE the built mesh's 10 s idle
#     window, whose CPU per peer per second it prints). Each build batch's line shows the process's
#     share of a core and how long goroutines waited for one: its
#     timeouts at large N are that queue. Run it under nice on a shared
#     machine.
#   bench-scale-ns: real daemons in namespaces, grown to N = 10, 20, 40
#     (integration/cmd/scalebench): seconds from the last launch until every
#     host sees every other and has its address, then, after a settle
#     period, idle over 60 s: CPU per daemon (utime+stime, share of a
#     core), wakeups/s, RSS and underlay bytes/s per daemon, the machine's
#     load average during the window, and the N=40/N=10 growth ratios
#     (SCALEBENCHFLAGS: -n 10,20 -window 60s -profile DIR -json). It raises
#     the shared ARP table's gc_thresh for N=40 and restores it (also on
#     Ctrl-C, and at the next run after a SIGKILL); run it under nice on a
#     shared machine.
bench-scale: bench-scale-sim bench-scale-ns

bench-scale-sim:
	$(GO) run ./sim/cmd/simbench $(SIMBENCHFLAGS)

bench-scale-ns: build deps
	WEAVEWG_BIN=$(abspath $(BIN)) $(GO) run ./integration/cmd/scalebench $(SCALEBENCHFLAGS)

# fuzz runs every Fuzz target for FUZZTIME each.
fuzz:
	@set -e; \
	for pkg in $$($(GO) list ./...); do \
		dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
		for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

clean:
	rm -rf bin $(RELEASE_DIR)
