#!/usr/bin/env bash
# CI check for the committed PTX: regenerate cuda-kernels/ptx/*.ptx into a temp dir with the
# pinned compiler (build-ptx.sh), fail on any difference, then assemble every PTX file with
# ptxas for sm_80 (A100) and sm_90 (H100/H200). Needs no GPU.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${PROFIT_PTX_VENV:-$ROOT/target/ptx-venv}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$HERE/build-ptx.sh" "$TMP/ptx"

status=0
for f in "$TMP"/ptx/*.ptx; do
    name="$(basename "$f")"
    if [ ! -f "$HERE/ptx/$name" ]; then
        echo "check-ptx: cuda-kernels/ptx/$name is missing: run cuda-kernels/build-ptx.sh" >&2
        status=1
    elif ! diff -q "$f" "$HERE/ptx/$name" >/dev/null; then
        echo "check-ptx: cuda-kernels/ptx/$name differs from its source: run cuda-kernels/build-ptx.sh" >&2
        diff "$f" "$HERE/ptx/$name" | head -n 20 >&2 || true
        status=1
    fi
done
for f in "$HERE"/ptx/*.ptx; do
    [ -f "$TMP/ptx/$(basename "$f")" ] || { echo "check-ptx: $f has no .cu source" >&2; status=1; }
done

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PTXAS="$(find "$SITE/nvidia" -type f -name ptxas -path '*/bin/*' | head -n1)"
[ -n "$PTXAS" ] || { echo "check-ptx: ptxas not found under $SITE/nvidia" >&2; exit 1; }
for f in "$HERE"/ptx/*.ptx; do
    for arch in sm_80 sm_90; do
        if "$PTXAS" -arch="$arch" "$f" -o "$TMP/$(basename "$f" .ptx).$arch.cubin"; then
            echo "check-ptx: ptxas -arch=$arch $(basename "$f"): ok"
        else
            echo "check-ptx: ptxas -arch=$arch $(basename "$f"): FAILED" >&2
            status=1
        fi
    done
done
[ "$status" -eq 0 ] && echo "check-ptx: committed PTX matches its sources and assembles for sm_80 and sm_90"
exit "$status"
