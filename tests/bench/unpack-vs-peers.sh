#!/usr/bin/env bash
# Unpack benchmark: tarpool against GNU tar and umoci on the same real image,
# measured in the same run, printed as ratios.
#
# Image: Debian bookworm minbase + python3 + a whiteout layer, built by
# ../shared/bench/make-images.sh style tools (mmdebstrap, umoci, skopeo).
# tarpool processes it as an ad-hoc image (3 raw layer tars, ~218 MB): copy
# into its blob store, classify, unpack into overlay layers, sync.
# Peers: `tar -xf` of the same 3 layers into one directory (no whiteouts,
# no blob store) and `umoci unpack` of the OCI image (gzip layers).
#
# Usage: tests/bench/unpack-vs-peers.sh [IMGDIR] [RUNS]   (root; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
IMG=${1:-/tmp/realimgs}
RUNS=${2:-3}
. tests/bench/lib.sh
ensure_tarpool
ensure_images "$IMG"
W=$(mktemp -d /var/tmp/tarpool-bench.XXXX)
trap 'rm -rf "$W"' EXIT
py3_layers "$IMG" "$W/bucket/images/py"
for i in $(seq "$RUNS"); do
    rm -rf "$W/s" "$W/t" "$W/u"; sync
    s=$(now); "$BIN" --state-dir "$W/s" run --once --jobs 1 --source "$W/bucket" >/dev/null; sync; e=$(now)
    echo "tarpool $(echo "$e - $s" | bc)" >> "$W/times"
    mkdir -p "$W/t"; sync
    s=$(now); for l in 1 2 3; do tar -xf "$W/bucket/images/py/$l.tar" -C "$W/t" 2>/dev/null || true; done; sync; e=$(now)
    echo "gnu-tar $(echo "$e - $s" | bc)" >> "$W/times"
    if command -v umoci >/dev/null; then
        s=$(now); umoci unpack --image "$IMG/oci:py3" "$W/u" >/dev/null 2>&1; sync; e=$(now)
        echo "umoci $(echo "$e - $s" | bc)" >> "$W/times"
    fi
    rm -rf "$W/s" "$W/t" "$W/u"
done
tp=$(grep '^tarpool ' "$W/times" | cut -d' ' -f2 | median)
printf '%-10s %-8s %s\n' tool median "runs (s)"
for tool in tarpool gnu-tar umoci; do
    grep -q "^$tool " "$W/times" || continue
    m=$(grep "^$tool " "$W/times" | cut -d' ' -f2 | median)
    printf '%-10s %-8.2f %s   tarpool/%s = %.2f\n' "$tool" "$m" "$(grep "^$tool " "$W/times" | cut -d' ' -f2 | tr '\n' ' ')" "$tool" "$(echo "$tp / $m" | bc -l)"
done
