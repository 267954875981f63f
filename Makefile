# dpu-offload build, test and demo entry points. `make test` and `make demo` are
# the two commands a fresh Debian 12 machine needs (as root); both provision
# first (Debian packages, containerd v2.4.2 and runc v1.3.5 built from the Go
# module proxy into $(CACHE)).
SHELL := /bin/bash
CACHE ?= /var/cache/dpu-offload
export DPU_OFFLOAD_CACHE := $(CACHE)
export PATH := $(CURDIR)/bin:$(CACHE)/bin:/usr/local/go/bin:$(PATH)
GO ?= go
GOFLAGS ?= -buildvcs=false
export GOFLAGS

CMDS := $(notdir $(wildcard cmd/*))
PROTOS := $(shell find api -name '*.proto' 2>/dev/null)
E2E_TIMEOUT ?= 45m

.PHONY: all build provision test unit lint e2e bench bench-qtfs demo generate clean testbed-up testbed-down

all: build

build:
	@mkdir -p bin
	@for c in $(CMDS); do echo "go build ./cmd/$$c"; $(GO) build -o bin/$$c ./cmd/$$c || exit 1; done

provision:
	@bash tests/testbed/provision

# test: everything CI runs. Unit tests first (fast), then the end-to-end
# suites against the testbed (real containerd, runc, FUSE, namespaces).
test: provision build lint unit e2e

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./tests/...

unit:
	$(GO) test -count=1 -timeout 15m ./...

e2e: build
	$(GO) test -tags e2e -p 1 -count=1 -timeout $(E2E_TIMEOUT) ./tests/e2e/...

bench: provision build bench-qtfs bench-runtime

bench-qtfs:
	@if [ -d tests/bench/qtfs ]; then $(GO) test -tags e2e -count=1 -timeout 30m -run '^$$' -bench . -benchtime 1x ./tests/bench/qtfs/; fi

bench-runtime:
	@if [ -d tests/bench/runtime ]; then $(GO) test -tags e2e -count=1 -timeout 30m -run '^$$' -bench . -benchtime 1x ./tests/bench/runtime/; fi

demo: provision build
	@bash tests/demo/demo

testbed-up: provision build
	@tests/testbed/testbed up

testbed-down:
	@tests/testbed/testbed down

# generate rebuilds the protobuf and ttrpc code under api/. The generated files
# are committed; api's TestGeneratedCodeIsCurrent fails when they are stale.
generate:
	@bash api/generate.sh

clean:
	rm -rf bin
