# Developer shortcuts; CI runs .ci/run, which needs none of these.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: crds test lint demo
crds:  ## regenerate the CRD from the API models (the single source of truth)
	$(VENV)/bin/lora-ablation crd > crds/lora.ablation.dev_loraablations.yaml
	cp crds/lora.ablation.dev_loraablations.yaml helm/lora-ablation-operator/files/crds/  # templates/crd.yaml renders it
test:
	bash scripts/test.sh
lint:
	bash scripts/lint.sh
demo:
	bash scripts/demo.sh
