# weavewg: build, test, demo. Targets that touch namespaces need root.

GO           ?= go
BIN          ?= bin/weavewg
TEST_TIMEOUT ?= 20m
FUZZTIME     ?= 10s

# command:Debian package, for the tools the integration tests, the demo and
# the benchmark use. Installed only when the command is missing.
TOOLS := ip:iproute2 nft:nftables iptables:iptables tcpdump:tcpdump ping:iputils-ping \
         iperf3:iperf3 dockerd:docker.io busybox:busybox-static podman:podman \
         wg:wireguard-tools promtool:prometheus dig:bind9-dnsutils dnsperf:dnsperf

.PHONY: all build test unit integration deps demo bench bench-dns fuzz vet clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/weavewg

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

# test runs every package's tests, fuzz seed corpora included: the unit
# tests under the race detector, then the integration tests (which need
# root, /dev/net/tun and the tools above; they drive the daemon binary, so
# -race would add nothing there).
test: deps
	$(GO) test -race -count=1 -timeout 10m $$($(GO) list ./... | grep -v '/integration')
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
# (iperf3 TCP and ping; ratios c/a and c/b beside the targets). deps installs
# iperf3 if it is missing. BENCHFLAGS=--json for scripts, --help for the rest.
bench: build deps
	WEAVEWG_BIN=$(abspath $(BIN)) $(GO) run ./integration/cmd/bench $(BENCHFLAGS)
	WEAVEWG_BIN=$(abspath $(BIN)) $(GO) run ./integration/cmd/natbench
	$(MAKE) --no-print-directory bench-dns

# bench-dns: queries per second for weave.local names against one host's
# DNS server, from a container, beside a bare miekg/dns server on the same
# path (integration TestDNSThroughput; target >= 20,000 q/s on 2 cores).
bench-dns: deps
	WEAVEWG_BENCH_DNS=1 $(GO) test -count=1 -run '^TestDNSThroughput$$' -v ./integration/

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
	rm -rf bin
