# The integration suite on kind, for machines with a Docker engine. The
# default suite runs against the local control plane (`make tools`), which
# needs no containers; these targets are the same tests against a real
# kubelet and real images. See docs/testing.md.
KIND ?= kind
KIND_CLUSTER ?= powgate
KIND_KUBECONFIG := $(CACHE)/kind/kubeconfig
IMAGE_TAG ?= dev
# Component folders with a Dockerfile; each becomes powgate-<folder>:$(IMAGE_TAG).
KIND_COMPONENTS ?= sidecar operator
KIND_IMAGES := $(foreach c,$(KIND_COMPONENTS),powgate-$(c):$(IMAGE_TAG))

.PHONY: kind-up
kind-up: ## Create a kind cluster and load the sidecar and operator images (needs Docker, kind)
	@mkdir -p $(dir $(KIND_KUBECONFIG))
	$(foreach c,$(KIND_COMPONENTS),docker build -f $(c)/Dockerfile -t powgate-$(c):$(IMAGE_TAG) . &&) true
	$(KIND) get clusters | grep -qx '$(KIND_CLUSTER)' || $(KIND) create cluster --name $(KIND_CLUSTER) --wait 120s
	$(KIND) get kubeconfig --name $(KIND_CLUSTER) > $(KIND_KUBECONFIG)
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(KIND_IMAGES)

# Tests that use the `cluster` fixture; POWGATE_KUBECONFIG makes the fixture
# use this cluster instead of starting the local one. The Deployment test runs
# the sidecar image (loaded above, never pulled) with a sleep command.
.PHONY: e2e-kind
e2e-kind: venv ## Run the cluster integration tests against the kind cluster from kind-up
	POWGATE_KUBECONFIG=$(KIND_KUBECONFIG) POWGATE_TEST_IMAGE=powgate-sidecar:$(IMAGE_TAG) \
	  $(VENV)/bin/pytest tests/integration -m cluster

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
	rm -f $(KIND_KUBECONFIG)
