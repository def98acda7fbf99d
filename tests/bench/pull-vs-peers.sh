#!/usr/bin/env bash
# Pull benchmark: from a real registry to an unpacked root filesystem,
# tarpool against `skopeo copy` + `umoci unpack` and containerd's
# `ctr images pull` (which unpacks), all pulling the same image from the
# same registry in the same run, printed as ratios.
#
# Image: the py3 image of ../shared/bench/make-images.sh (Debian bookworm
# minbase + python3 + a whiteout layer; 3 gzip layers, built by mmdebstrap
# and umoci), pushed by skopeo to Debian's docker-registry (distribution
# v2) on 127.0.0.1, plain HTTP.
# - tarpool: `run --once --jobs 1 --source registry://...` (overlay
#   backend): resolve, fetch, verify, unpack every layer, snapshot, sync.
#   `tarpool` is a host that has run tarpool before: its state directory
#   holds the compiled WebAssembly steps (`cache/`) and nothing else, no
#   image, blob or layer. `tarpool-cold` starts from an empty state
#   directory, so it also compiles the steps (once per host and version).
# - skopeo+umoci: `skopeo copy docker://... oci:DIR:TAG`, then `umoci
#   unpack` into a bundle, sync.
# - ctr: `ctr images pull --plain-http` into a new containerd (1.6,
#   overlayfs snapshotter, its root on the same filesystem), sync.
# Caches are dropped before each measurement.
#
# Usage: tests/bench/pull-vs-peers.sh [IMGDIR] [RUNS]   (root; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
IMG=${1:-/tmp/realimgs}
RUNS=${2:-3}
. tests/bench/lib.sh
ensure_tarpool
for t in docker-registry skopeo umoci containerd ctr; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install docker-registry skopeo umoci containerd)" >&2; exit 1; }
done
ensure_images "$IMG"
W=$(mktemp -d /var/tmp/tarpool-pull.XXXX)
REG_PID= CTRD_PID=
# Keeps the script's own exit status (the registry's SIGTERM status is not
# the benchmark's).
cleanup() {
    local status=$?
    if [ -n "$CTRD_PID" ]; then kill "$CTRD_PID" 2>/dev/null || true; wait "$CTRD_PID" 2>/dev/null || true; fi
    if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
    umount -R "$W/ctrd" 2>/dev/null || true
    rm -rf "$W"
    exit "$status"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
cat > "$W/registry.yml" <<CFG
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: $REG
CFG
docker-registry serve "$W/registry.yml" > "$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false "oci:$IMG/oci:py3" "docker://$REG/library/py:3"

fresh() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# A containerd of the benchmark's own, started anew (not timed) for each run.
start_containerd() {
    mkdir -p "$W/ctrd"
    cat > "$W/ctrd.toml" <<CFG
version = 2
root = "$W/ctrd/root"
state = "$W/ctrd/state"
[grpc]
  address = "$W/ctrd/sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable = true
CFG
    containerd --config "$W/ctrd.toml" > "$W/ctrd.log" 2>&1 &
    CTRD_PID=$!
    for _ in $(seq 100); do [ -S "$W/ctrd/sock" ] && break; sleep 0.1; done
}
stop_containerd() {
    kill "$CTRD_PID"; wait "$CTRD_PID" 2>/dev/null || true; CTRD_PID=
    umount -R "$W/ctrd" 2>/dev/null || true
    rm -rf "$W/ctrd"
}

pull() {
    "$BIN" --state-dir "$W/s" run --once --jobs 1 \
        --source "registry://$REG/library/py:3?plain-http&name=py" >/dev/null 2>&1
}
for i in $(seq "$RUNS"); do
    rm -rf "$W/s"; fresh
    s=$(now); pull; sync; e=$(now)
    echo "tarpool-cold $(echo "$e - $s" | bc)" >> "$W/times"
    # Everything but the compiled steps goes.
    find "$W/s" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} +; fresh
    s=$(now); pull; sync; e=$(now)
    echo "tarpool $(echo "$e - $s" | bc)" >> "$W/times"
    "$BIN" --state-dir "$W/s" status | grep -q '^py .*ready' || { echo "tarpool did not make py ready" >&2; exit 1; }
    rm -rf "$W/s"

    rm -rf "$W/o" "$W/b"; fresh
    s=$(now)
    skopeo copy -q --src-tls-verify=false "docker://$REG/library/py:3" "oci:$W/o:py3"
    umoci unpack --image "$W/o:py3" "$W/b" >/dev/null
    sync; e=$(now)
    echo "skopeo+umoci $(echo "$e - $s" | bc)" >> "$W/times"
    rm -rf "$W/o" "$W/b"

    start_containerd; fresh
    s=$(now)
    ctr --address "$W/ctrd/sock" -n bench images pull --plain-http --snapshotter overlayfs \
        "$REG/library/py:3" >/dev/null
    sync; e=$(now)
    echo "ctr-pull $(echo "$e - $s" | bc)" >> "$W/times"
    stop_containerd
done
tp=$(grep '^tarpool ' "$W/times" | cut -d' ' -f2 | median)
printf '%-13s %-8s %s\n' tool median "runs (s)"
for tool in tarpool tarpool-cold skopeo+umoci ctr-pull; do
    m=$(grep "^$tool " "$W/times" | cut -d' ' -f2 | median)
    printf '%-13s %-8.2f %s   tarpool/%s = %.2f\n' "$tool" "$m" "$(grep "^$tool " "$W/times" | cut -d' ' -f2 | tr '\n' ' ')" "$tool" "$(echo "$tp / $m" | bc -l)"
done
