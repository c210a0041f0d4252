#!/usr/bin/env bash
# Validates the shipped Kubernetes manifests against the Kubernetes OpenAPI
# schemas of the oldest and the newest version we support (the range of
# our k8s-openapi: 1.33 to 1.37), strictly: an unknown or misspelt field
# fails. Uses PyPI's kubernetes-validate (it bundles the schemas, so it
# needs no cluster), installed with pinned versions into a venv of its own.
#
#   bash integration/deploy/validate.sh [FILE...]   (default: the shipped manifests)
#
# Exit 0 when every resource of every file passes for every version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${FLANNEL_VALIDATE_VENV:-$here/../../target/kubernetes-validate}
versions=(1.33.0 1.37.0)
files=("$@")
[ ${#files[@]} -gt 0 ] || files=("$here/flannel-embed.yaml" "$here/rbac.yaml")

if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    echo "validate: installing kubernetes-validate into $venv" >&2
    python3 -m venv "$venv" >&2
    timeout 600 "$venv/bin/pip" install -q --disable-pip-version-check \
        -r "$here/validate-requirements.txt" >&2
fi
for version in "${versions[@]}"; do
    timeout 120 "$venv/bin/kubernetes-validate" --strict --no-warn -k "$version" "${files[@]}"
done
