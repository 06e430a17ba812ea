# The Helm chart (charts/powgate) and the container images. helm is built by
# `make tools`; `make images` installs and starts a Docker engine if needed
# (see docs/images.md).
HELM ?= $(BIN)/helm
CHART := charts/powgate
IMAGE_TAG ?= dev

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

# Built without pulling (powgate_testbed.images): a base from Debian's
# packages, the wheels made here, then the Dockerfiles; saved as
# $(CACHE)/images/<name>.tar for the real node. Starts a private Docker
# engine when none runs. PYTHON_IMAGE=python:3.11-slim-bookworm builds on
# the pulled base instead (machines that reach a registry).
.PHONY: images
images: venv system-deps ## Build the sidecar, operator, stand-in and pause images here, without pulling
	$(PY) -m powgate_testbed.images build --tag $(IMAGE_TAG)

.PHONY: image-size
image-size: venv ## Estimate the sidecar image's size from the installed wheels (no Docker needed)
	$(PY) hack/image_size.py sidecar
