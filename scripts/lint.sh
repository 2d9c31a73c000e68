#!/usr/bin/env bash
# Linters CI runs beside the tests: style, import layering, and the CRD drift check.
source "$(dirname "$0")/env.sh"
ruff check operator trainer_image tests
lint-imports
lora-ablation crd | diff -u crds/lora.ablation.dev_loraablations.yaml - \
  || { echo "crds/ is stale: run 'make crds'" >&2; exit 1; }
lora-ablation validate examples/*.yaml
hadolint trainer_image/Dockerfile operator/Dockerfile
actionlint .github/workflows/*.yaml
zizmor --offline --persona pedantic --no-progress .github/workflows
bash scripts/helm.sh lint --strict helm/lora-ablation-operator
