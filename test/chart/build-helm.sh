#!/usr/bin/env bash
# Builds helm from the Go module proxy (release downloads are unreachable here) into a cache folder
# outside the repo and prints its path. Idempotent; exit 3 with a SKIP message when Go is absent.
set -euo pipefail
HELM_VERSION=${HELM_VERSION:-v3.22.0}
DEST=${VDISK_HELM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vdisk/helm/$HELM_VERSION}
if [[ -x "$DEST/helm" ]]; then echo "$DEST/helm"; exit 0; fi
command -v go >/dev/null || { echo "SKIP: no Go toolchain on this machine; helm cannot be built" >&2; exit 3; }
mkdir -p "$DEST"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
# helm's go.mod has no replace directives, so `go install pkg@version` works; the -X stamps the
# version that `helm version` prints.
(cd "$WORK" && CGO_ENABLED=0 GOBIN="$DEST" GOFLAGS=-buildvcs=false GOTOOLCHAIN=local \
  go install -trimpath -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >&2
echo "$DEST/helm"
