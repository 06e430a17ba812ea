# Pinned Go tools, built from the modules under hack/tools/ (their go.mod and
# go.sum files are the one place the versions live). Each binary depends on
# its module's files, so a second `make tools` is a no-op.
TOOLS_DIR := $(CURDIR)/hack/tools
GO ?= go
# hack/progress.sh says every 30 s that a build is still going (a cold one is silent for minutes).
GOBUILD = cd $(TOOLS_DIR)/$(1) && CGO_ENABLED=0 $(CURDIR)/hack/progress.sh "go build $(1)" $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/

KUBE_BINS := $(BIN)/kube-apiserver $(BIN)/kube-controller-manager $(BIN)/kube-scheduler $(BIN)/kubectl \
	$(BIN)/kubelet $(BIN)/kube-proxy
TOOL_BINS := $(KUBE_BINS) $(BIN)/etcd $(BIN)/kwok $(BIN)/kwokctl $(BIN)/helm $(BIN)/runc
# kwok keeps its default stages (how fake nodes and pods move through their
# lifecycle) in its module, not in its binary; the cluster starter hands them
# to kwok. Taken from the pinned module, so they always match the binary.
KWOK_STAGES := $(CACHE)/share/kwok/stages.yaml
KWOK_STAGE_FILES := node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
	pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml

.PHONY: tools
tools: $(TOOL_BINS) $(KWOK_STAGES) ## Build the control plane, kubelet, kube-proxy, runc, etcd, kwok and helm into .cache/bin

# One go build for all six: they share most packages, and a single
# invocation lets the compiler schedule them together.
$(KUBE_BINS) &: $(TOOLS_DIR)/kubernetes/go.mod $(TOOLS_DIR)/kubernetes/go.sum
	@echo ">> building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy (first build takes minutes)"
	$(call GOBUILD,kubernetes) k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
	@touch $(KUBE_BINS)

# runc links libseccomp through cgo (Debian's libseccomp-dev, `make system-deps`):
# the real node's containers get the default seccomp profile.
$(BIN)/runc: $(TOOLS_DIR)/runc/go.mod $(TOOLS_DIR)/runc/go.sum
	@echo ">> building runc"
	cd $(TOOLS_DIR)/runc && CGO_ENABLED=1 $(CURDIR)/hack/progress.sh "go build runc" $(GO) build -trimpath -tags seccomp -ldflags='-s -w' -o $(BIN)/runc github.com/opencontainers/runc

$(BIN)/etcd: $(TOOLS_DIR)/etcd/go.mod $(TOOLS_DIR)/etcd/go.sum
	@echo ">> building etcd"
	$(call GOBUILD,etcd)etcd go.etcd.io/etcd/server/v3

$(BIN)/kwok $(BIN)/kwokctl &: $(TOOLS_DIR)/kwok/go.mod $(TOOLS_DIR)/kwok/go.sum
	@echo ">> building kwok, kwokctl"
	$(call GOBUILD,kwok) sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
	@touch $(BIN)/kwok $(BIN)/kwokctl

# Depends on the kwok binary: building it is what puts the module in Go's cache.
$(KWOK_STAGES): $(BIN)/kwok
	@echo ">> extracting kwok stages"
	@mkdir -p $(@D)
	dir=$$(cd $(TOOLS_DIR)/kwok && $(GO) list -m -f '{{.Dir}}' sigs.k8s.io/kwok) && \
	  for f in $(KWOK_STAGE_FILES); do echo '---'; cat "$$dir/kustomize/stage/$$f"; done > $@.tmp
	mv $@.tmp $@

$(BIN)/helm: $(TOOLS_DIR)/helm/go.mod $(TOOLS_DIR)/helm/go.sum
	@echo ">> building helm"
	$(call GOBUILD,helm) helm.sh/helm/v3/cmd/helm
