#!/usr/bin/env bash
# Builds (or reuses) the Kubernetes control-plane binaries the integration tier runs:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, into one folder
# following the KUBEBUILDER_ASSETS convention (see test/controlplane/README.md).
# Exit codes: 0 = binaries ready (path printed last on stdout), 3 = SKIP (no Go / no disk), other = failure.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ASSETS=${KUBEBUILDER_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/vdisk/controlplane/$K8S_VERSION}
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

have_all() {
  for b in etcd "${K8S_BINS[@]}"; do [ -x "$ASSETS/$b" ] || return 1; done
}

# Fast path: everything already there (a KUBEBUILDER_ASSETS folder or our cache): build nothing.
if have_all; then
  echo "control plane binaries: reusing $ASSETS" >&2
  echo "$ASSETS"
  exit 0
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then PATH="/usr/local/go/bin:$PATH"; fi
if ! command -v go >/dev/null 2>&1; then
  echo "SKIP: no Go toolchain on this machine: cannot build the Kubernetes control plane into $ASSETS" >&2
  echo "SKIP: integration tests needing a control plane will be skipped (set KUBEBUILDER_ASSETS to a folder with etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)" >&2
  exit 3
fi

mkdir -p "$ASSETS"
FREE_KB=$(df -Pk "$ASSETS" | awk 'NR==2 {print $4}')
if [ "${FREE_KB:-0}" -lt 6000000 ]; then
  echo "SKIP: less than 6 GB free next to $ASSETS: a cold control-plane build needs module + build caches" >&2
  exit 3
fi

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
# One build at a time per cache folder (parallel test runs, cluster:up, CI).
exec 9>"$ASSETS/.build.lock"
flock 9
if have_all; then echo "$ASSETS"; exit 0; fi

START=$(date +%s)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
STAGING="v0.${K8S_VERSION#v1.}"   # v1.34.4 -> v0.34.4
MINOR=$(cut -d. -f2 <<<"$K8S_VERSION")

# Wrapper module for k8s.io/kubernetes: the committed one when it pins this version, else generated.
k8s_module() {
  if grep -Eq "^(require)?[[:space:]]*k8s.io/kubernetes $K8S_VERSION( |\$)" "$HERE/k8s/go.mod" 2>/dev/null && [ -s "$HERE/k8s/go.sum" ]; then
    cp "$HERE/k8s/go.mod" "$HERE/k8s/go.sum" "$W/k8s/"
    return
  fi
  echo "generating the k8s wrapper module for $K8S_VERSION" >&2
  local kmod repl godebug
  kmod=$(cd "$W" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\([^"]*\)".*/\1/p')
  repl=$(awk -v v="$STAGING" '{ if ($1=="replace") { $1=$2; $2=$3; $3=$4 } }
          $2=="=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }' "$kmod" | sort -u)
  godebug=$(grep -m1 '^godebug' "$kmod" || echo "godebug default=go1.$((MINOR - 10))")
  cat >"$W/k8s/go.mod" <<MOD
// Wrapper module: builds the control plane of Kubernetes $K8S_VERSION from the Go module proxy
// (k8s.io/kubernetes maps its staging modules to ./staging, so each one is replaced by its published tag).
module local.invalid/k8s-test-bins

go 1.24.0

$godebug

tool (
	k8s.io/kubernetes/cmd/kube-apiserver
	k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kube-scheduler
	k8s.io/kubernetes/cmd/kubectl
)

require k8s.io/kubernetes $K8S_VERSION

replace (
$repl
)
MOD
  (cd "$W/k8s" && go mod tidy)
  if [ "${VDISK_UPDATE_WRAPPERS:-0}" = 1 ]; then cp "$W/k8s/go.mod" "$W/k8s/go.sum" "$HERE/k8s/"; fi
}

etcd_module() {
  if grep -Eq "^(require)?[[:space:]]*go.etcd.io/etcd/server/v3 $ETCD_VERSION( |\$)" "$HERE/etcd/go.mod" 2>/dev/null && [ -s "$HERE/etcd/go.sum" ]; then
    cp "$HERE/etcd/go.mod" "$HERE/etcd/go.sum" "$W/etcd/"
    return
  fi
  echo "generating the etcd wrapper module for $ETCD_VERSION" >&2
  printf '// Wrapper module: etcd server %s (its own go.mod has local replaces, so it cannot be go-installed).\nmodule local.invalid/etcd-bin\n\ngo 1.24.0\n\ntool go.etcd.io/etcd/server/v3\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" "$ETCD_VERSION" >"$W/etcd/go.mod"
  (cd "$W/etcd" && go mod tidy)
  if [ "${VDISK_UPDATE_WRAPPERS:-0}" = 1 ]; then cp "$W/etcd/go.mod" "$W/etcd/go.sum" "$HERE/etcd/"; fi
}

mkdir -p "$W/k8s" "$W/etcd" "$W/out"
if [ ! -x "$ASSETS/etcd" ]; then
  etcd_module
  echo "building etcd $ETCD_VERSION ..." >&2
  (cd "$W/etcd" && go build -trimpath -ldflags="-s -w" -o "$W/out/etcd" go.etcd.io/etcd/server/v3)
  mv "$W/out/etcd" "$ASSETS/etcd"
fi

NEED=0
for b in "${K8S_BINS[@]}"; do [ -x "$ASSETS/$b" ] || NEED=1; done
if [ "$NEED" = 1 ]; then
  k8s_module
  echo "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $K8S_VERSION (cold: ~5 min on 2 cores) ..." >&2
  DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  LDF="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDF="$LDF -X '$p.gitVersion=$K8S_VERSION' -X '$p.gitMajor=1' -X '$p.gitMinor=$MINOR' -X '$p.gitTreeState=clean' -X '$p.buildDate=$DATE'"
  done
  (cd "$W/k8s" && go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$LDF" -o "$W/out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  for b in "${K8S_BINS[@]}"; do mv "$W/out/$b" "$ASSETS/$b"; done
fi

"$ASSETS/kube-apiserver" --version >&2
"$ASSETS/etcd" --version 2>&1 | head -1 >&2
echo "control plane binaries built in $(($(date +%s) - START)) s into $ASSETS" >&2
echo "$ASSETS"
