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
# With INSPECT=FILE.wasm (an inspect step, e.g. the built
# examples/inspect-rules), the ad-hoc py3 image is measured again in the same
# run with that step pinned, its share printed beside the one without: the
# inspect step's time is inside the tar check's (the worker times the two
# together). Only the ad-hoc image: the other two have configurations that
# run as root, which the example denies before unpacking anything.
#
# Usage: [INSPECT=FILE.wasm] tests/bench/guest-cost.sh [IMGDIR] [RUNS]   (root; needs a release build)
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

CONFIGS=(plain)
: > "$W/plain.toml"
if [ -n "${INSPECT:-}" ]; then
    sha=$(sha256sum "$INSPECT" | cut -d' ' -f1)
    printf '[steps]\ninspect = [{ path = "%s", sha256 = "%s" }]\n' "$(realpath "$INSPECT")" "$sha" > "$W/inspect.toml"
    CONFIGS+=(inspect)
fi
# One cold start, to fill the compiled-guest cache (timed on its own).
s=$(date +%s.%N)
"$BIN" --config "$W/${CONFIGS[-1]}.toml" --state-dir "$W/cold" run --once --jobs 1 --source "$W/bucket" >/dev/null || true
e=$(date +%s.%N)
echo "cold run (compiles the guests once): $(echo "$e - $s" | bc) s"
# Each image alone in a fresh state directory (they share their layers, so
# together only the first would unpack anything).
for i in $(seq "$RUNS"); do
    for cfg in "${CONFIGS[@]}"; do
        imgs="py py-docker py-oci"; [ "$cfg" = plain ] || imgs=py
        for img in $imgs; do
            rm -rf "$W/s" "$W/one"; mkdir -p "$W/s" "$W/one/images"; cp -a "$W/cold/cache" "$W/s/cache"
            obj=$img; [ "$img" = py ] || obj=$img.tar
            cp -al "$W/bucket/images/$obj" "$W/one/images/"; sync
            "$BIN" --config "$W/$cfg.toml" --state-dir "$W/s" run --once --jobs 1 --source "$W/one" >/dev/null
            "$BIN" --state-dir "$W/s" audit "$img" --json > "$W/audit-$cfg-$img-$i.json"
        done
    done
done
python3 - "$W" "$RUNS" "${CONFIGS[@]}" <<'PY'
import json, sys, statistics
w, runs, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(f"{'image':<18} {'guest ms':>9} {'unpack ms':>10} {'run ms':>8} {'guest/unpack':>13} {'guest/run':>10}   (medians of {runs} runs)")
rows = [("plain", img) for img in ["py", "py-docker", "py-oci"]] + [(c, "py") for c in configs if c != "plain"]
for cfg, img in rows:
    g, u, r = [], [], []
    for i in range(1, runs + 1):
        a = json.load(open(f"{w}/audit-{cfg}-{img}-{i}.json"))
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
    label = img if cfg == "plain" else f"{img} +{cfg}"
    print(f"{label:<18} {gm:>9.1f} {um:>10.0f} {rm:>8.0f} {gm/um:>12.1%} {gm/rm:>10.1%}")
PY
