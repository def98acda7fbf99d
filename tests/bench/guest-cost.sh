#!/usr/bin/env bash
# What the WebAssembly steps cost, per image: the time spent inside the
# classify, manifest and tar check guests (measured by the host around each
# call) against the unpack-layers transition and the whole run, printed as
# shares. Target (issue 5): guest work <= 10% of the unpack time.
#
# Image: Debian bookworm minbase + python3 + a whiteout layer (3 layers,
# ~10k entries), as built by ../shared/bench/make-images.sh (mmdebstrap,
# umoci, skopeo), in three formats: ad-hoc raw layers, docker-save archive,
# OCI archive. The compiled guests are cached before the measured runs (a
# cold start compiles them once, ~1-2 s, reported separately).
#
# Usage: tests/bench/guest-cost.sh [IMGDIR] [RUNS]   (root; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
IMG=${1:-/tmp/realimgs}
RUNS=${2:-3}
. tests/bench/lib.sh
ensure_tarpool
ensure_images "$IMG"
W=$(mktemp -d /var/tmp/tarpool-guestcost.XXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/cache"
py3_layers "$IMG" "$W/bucket/images/py"
cp "$IMG/py-docker.tar" "$W/bucket/images/py-docker.tar"
cp "$IMG/py-oci.tar" "$W/bucket/images/py-oci.tar"

# One cold start, to fill the compiled-guest cache (timed on its own).
s=$(date +%s.%N)
"$BIN" --state-dir "$W/cold" run --once --jobs 1 --source "$W/bucket" >/dev/null
e=$(date +%s.%N)
echo "cold run (compiles the guests once): $(echo "$e - $s" | bc) s"
# Each image alone in a fresh state directory (they share their layers, so
# together only the first would unpack anything).
for i in $(seq "$RUNS"); do
    for img in py py-docker py-oci; do
        rm -rf "$W/s" "$W/one"; mkdir -p "$W/s" "$W/one/images"; cp -a "$W/cold/cache" "$W/s/cache"
        obj=$img; [ "$img" = py ] || obj=$img.tar
        cp -al "$W/bucket/images/$obj" "$W/one/images/"; sync
        "$BIN" --state-dir "$W/s" run --once --jobs 1 --source "$W/one" >/dev/null
        "$BIN" --state-dir "$W/s" audit "$img" --json > "$W/audit-$img-$i.json"
    done
done
python3 - "$W" "$RUNS" <<'PY'
import json, sys, statistics
w, runs = sys.argv[1], int(sys.argv[2])
print(f"{'image':<10} {'guest ms':>9} {'unpack ms':>10} {'run ms':>8} {'guest/unpack':>13} {'guest/run':>10}   (medians of {runs} runs)")
for img in ["py", "py-docker", "py-oci"]:
    g, u, r = [], [], []
    for i in range(1, runs + 1):
        a = json.load(open(f"{w}/audit-{img}-{i}.json"))
        ts = [t for t in a["transitions"] if t["outcome"] == "ok"]
        guest = unpack = 0.0
        for t in ts:
            out = t.get("output") or {}
            if isinstance(out, dict):
                guest += out.get("guest_ms", 0) + out.get("tar_check_ms", 0)
            if t["name"] == "unpack-layers":
                unpack = t["finished_at"] - t["started_at"]
        run = max(t["finished_at"] for t in ts) - min(t["started_at"] for t in ts)
        g.append(guest); u.append(unpack); r.append(run)
    gm, um, rm = statistics.median(g), statistics.median(u), statistics.median(r)
    print(f"{img:<10} {gm:>9.1f} {um:>10.0f} {rm:>8.0f} {gm/um:>12.1%} {gm/rm:>10.1%}")
PY
