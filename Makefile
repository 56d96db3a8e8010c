# Flotilla. `make run` starts an all-in-one cluster on embedded defaults;
# `make test` is what CI runs (.ci/run).
GO        ?= go
BIN       := bin/flotilla
# The embedded kubectl reports this version, one minor within the API's.
KVERSION  := v1.37.2
LDFLAGS   := -X k8s.io/client-go/pkg/version.gitVersion=$(KVERSION) \
             -X k8s.io/client-go/pkg/version.gitMajor=1 \
             -X k8s.io/client-go/pkg/version.gitMinor=37 \
             -X k8s.io/component-base/version.gitVersion=$(KVERSION) \
             -X k8s.io/component-base/version.gitMajor=1 \
             -X k8s.io/component-base/version.gitMinor=37
PKGS      := ./...
# -race where it fits in CI's time; the end-to-end packages build the binary
# themselves.
TESTFLAGS ?= -race -timeout 25m
DATA      ?= ./data

.PHONY: all build test test-short run images bench soak lint fuzz clean
.PHONY: demo demo-down cluster cluster-down

all: build

# Static (CGO_ENABLED=0): without cgo the plugin package that containerd and
# kustomize import is a stub, so the binary exports no dynamic symbols
# (20 MB the loader touched in every process) and runs on any Linux.
build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/flotilla

test: build
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) test $(TESTFLAGS) $(PKGS)

# Unit tests only: skips the multi-process and container suites.
test-short:
	$(GO) test -short $(PKGS)

# A master and an agent in one process, with its own containerd under
# $(DATA)/containerd (needs root: containers and network namespaces).
run: build
	./$(BIN) server --data-dir $(DATA) --bootstrap-expect 1 --bind 127.0.0.1 --agent

# The test images as OCI archives (no registry needed): bin/toolbox.tar.
images:
	$(GO) run ./testimages/mkimage -o bin

# The echo demo (deploy/demo.sh) on the cluster $KUBECONFIG names, else on
# make run's ($(DATA)/kubeconfig): a Deployment and a NodePort Service, then a
# few requests through each. demo-down removes it.
demo: build images
	DATA=$(DATA) deploy/demo.sh up

demo-down: build
	DATA=$(DATA) deploy/demo.sh down

# Three masters and two agents on this machine, each in its own network
# namespace on a private bridge (deploy/cluster.sh; needs root). Data and
# logs under $(DATA)/cluster.
cluster: build
	DATA=$(DATA) deploy/cluster.sh up

cluster-down:
	DATA=$(DATA) deploy/cluster.sh down

# Benchmarks never run in CI. Results and the command go in BENCHMARKS.md.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -timeout 60m ./fsm/ ./cluster/... ./scheduler/ ./netproxy/
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./integration/...
	cd bench && $(GO) run ./cmd/storebench -flotilla ../$(BIN) $(BENCHFLAGS)

# Slow repetitions of the fault tests.
soak: build
	FLOTILLA_SOAK=1 $(GO) test -run 'Linearizab|Failover|Soak' -timeout 120m ./cluster/... ./integration/...
	$(GO) test -race -count 5 -run 'TestHA|TestServiceProxy' -timeout 120m ./integration/

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeTxn -fuzztime 60s ./fsm/
	$(GO) test -run '^$$' -fuzz FuzzDesiredFrontends -fuzztime 60s ./netproxy/

lint:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }

clean:
	rm -rf bin
