# The Helm chart (charts/powgate) and the container images. helm is built by
# `make tools`; building images needs a Docker engine (see docs/images.md).
HELM ?= $(BIN)/helm
CHART := charts/powgate
IMAGE_TAG ?= dev
IMAGE_PREFIX ?= powgate-
IMAGE_COMPONENTS := sidecar operator

.PHONY: chart-crds
chart-crds: crds ## Copy the generated CRD into the chart (a unit test fails on drift)
	cp crds/powpolicy.yaml $(CHART)/files/powpolicy.yaml

.PHONY: chart-lint
chart-lint: $(HELM) ## helm lint the chart, with default and with every optional part on
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) --set certManager.enabled=true,networkPolicy.enabled=true \
	  --set operator.replicas=2 --set 'operator.watchNamespaces={ai,ml}'

.PHONY: chart-test
chart-test: venv $(HELM) ## Chart and Dockerfile tests: rendering, schema, and a real helm install
	$(VENV)/bin/pytest tests/unit/test_chart.py tests/unit/test_dockerfiles.py tests/integration/test_chart_install.py

.PHONY: images
images: ## Build the sidecar and operator images (needs Docker) as powgate-<component>:$$IMAGE_TAG
	$(foreach c,$(IMAGE_COMPONENTS),docker build -f $(c)/Dockerfile -t $(IMAGE_PREFIX)$(c):$(IMAGE_TAG) . &&) true

.PHONY: image-size
image-size: venv ## Estimate the sidecar image's size from the installed wheels (no Docker needed)
	$(PY) hack/image_size.py sidecar
