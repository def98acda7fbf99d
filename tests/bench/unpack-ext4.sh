#!/usr/bin/env bash
# Unpack benchmark on a real filesystem: tarpool against GNU tar, pigz|tar,
# umoci and containerd 1.6, all in one run, each writing into a fresh,
# loop-mounted ext4 volume, synced; printed as ratios tarpool/peer.
#
# Image: `py3` (Debian bookworm minbase + python3 + a whiteout layer; 3 gzip
# layers, ~81 MB compressed, ~216 MB unpacked), built by
# ../shared/bench/make-images.sh into IMGDIR (oci/ layout + py-oci.tar).
#
# Each tool, each run: a fresh sparse 2 GiB file on /var/tmp, mkfs.ext4 (same
# options for all), loop-mount, run the tool with its output on the volume,
# sync that volume (timed), unmount. The tool order rotates from run to run.
#   tarpool     `run --once --jobs 1 --backend overlay` of a bucket holding
#               images/py.tar (the OCI archive), --state-dir on the volume:
#               copies the archive into its blob store, verifies the
#               manifest/config/layer digests, unpacks each layer into its own
#               overlay snapshot (whiteouts applied). The compiled-guest cache
#               (a one-time cost per host) is pre-filled; the cold time
#               (empty cache) is printed once.
#   tarpool-unpack  the same run, timed from verified local blobs: an untimed
#               first run copies the archive into the blob store, verifies
#               it and parses the manifest, and stops itself (SIGKILL, a
#               failpoint) before unpack-layers; the volume is synced; the
#               timed run resumes it (unpacks every layer, verifying each
#               layer's digest and diff ID, snapshot, tracking).
#   tarpool-native  tarpool-unpack with the tar check run natively (the same
#               crate the guest is built from, outside WebAssembly): a
#               binary built with `--features bench-native-check`
#               (NATIVE_BIN, default target/release/tarpool-native; built
#               if missing), TARPOOL_BENCH_NATIVE_CHECK=1. What the sandbox
#               costs is tarpool-unpack / tarpool-native.
#   gnu-tar     `tar -xzf` of each gzip layer blob, in order, into one dir
#               (no whiteout handling, no digest checks).
#   pigz|tar    `pigz -dc BLOB | tar -x` per layer (same caveats).
#   umoci       `umoci unpack --image IMGDIR/oci:py3` (verifies digests,
#               applies whiteouts, writes an mtree manifest).
#   containerd  containerd 1.6 (Debian) with a private root on the volume
#               (state and socket outside it), `ctr images import` of the same
#               OCI archive, overlayfs snapshotter (content store + unpack).
#               Daemon start/stop is not timed.
# Input blobs are read from the page cache (warm) unless DROP_CACHES=1.
# "sync" is `sync -f VOLUME` (syncfs of the volume: its data reaches the
# backing file through the loop device's flush), so other work on the host
# does not land in the timings.
#
# Usage: tests/bench/unpack-ext4.sh [IMGDIR] [RUNS]   (root; needs a release build)
#   env: RUNS (default 3), TARPOOL_BIN, VOLSIZE (default 2G), DROP_CACHES=1
set -euo pipefail
cd "$(dirname "$0")/../.."
IMG=${1:-/tmp/realimgs}
RUNS=${2:-${RUNS:-3}}
VOLSIZE=${VOLSIZE:-2G}
DROP_CACHES=${DROP_CACHES:-0}
BIN=${TARPOOL_BIN:-target/release/tarpool}
BIN=$(realpath "$BIN" 2>/dev/null || echo "$BIN")
MKFS_OPTS=(-q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0)

[ "$(id -u)" = 0 ] || { echo "run as root (loop mounts)" >&2; exit 2; }
# The failpoints feature (test machinery): the prep run stops before
# unpack-layers with TARPOOL_FAILPOINTS. Built unless TARPOOL_BIN is given.
[ -n "${TARPOOL_BIN:-}" ] || cargo build --release --locked -p tarpool --features failpoints
NATIVE_BIN=${NATIVE_BIN:-target/release/tarpool-native}
if [ ! -x "$NATIVE_BIN" ]; then
    cargo build --release --locked -p tarpool --features bench-native-check,failpoints
    cp target/release/tarpool "$NATIVE_BIN"
    cargo build --release --locked -p tarpool --features failpoints # the usual binary back in place
fi
NATIVE_BIN=$(realpath "$NATIVE_BIN")
if [ ! -d "$IMG/oci" ] || [ ! -f "$IMG/py-oci.tar" ]; then
    MAKE=${MAKE_IMAGES:-../shared/bench/make-images.sh}
    [ -x "$MAKE" ] || { echo "no images in $IMG and no $MAKE to build them" >&2; exit 1; }
    "$MAKE" "$IMG"
fi

# Peers are Debian packages; install what is missing (best effort).
need() { # need CMD PKG
    command -v "$1" >/dev/null && return 0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 || true
    command -v "$1" >/dev/null
}
declare -A UNAVAILABLE=()
need pigz pigz || UNAVAILABLE[pigz-tar]="pigz not installed"
need umoci umoci || UNAVAILABLE[umoci]="umoci not installed"
if ! need containerd containerd || ! command -v ctr >/dev/null; then
    UNAVAILABLE[containerd]="containerd/ctr not installed (apt-get install containerd failed)"
fi

W=$(mktemp -d /var/tmp/tarpool-ext4.XXXX)
MNT=$W/mnt
LOOP=""
CTRD_PID=""
stop_containerd() {
    if [ -n "$CTRD_PID" ]; then
        kill "$CTRD_PID" 2>/dev/null || true
        wait "$CTRD_PID" 2>/dev/null || true
        CTRD_PID=""
    fi
}
unvol() {
    if mountpoint -q "$MNT" 2>/dev/null; then
        umount -R "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
    fi
    if [ -n "$LOOP" ]; then losetup -d "$LOOP" 2>/dev/null || true; LOOP=""; fi
    rm -f "$W/vol.img"
}
cleanup() { stop_containerd; unvol; rm -rf "$W"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

vol() { # a fresh ext4 volume at $MNT
    unvol
    mkdir -p "$MNT"
    truncate -s "$VOLSIZE" "$W/vol.img"
    mkfs.ext4 "${MKFS_OPTS[@]}" "$W/vol.img"
    LOOP=$(losetup -f --show "$W/vol.img")
    mount "$LOOP" "$MNT"
    sync
    if [ "$DROP_CACHES" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches; fi
}
now() { date +%s.%N; }
syncvol() { sync -f "$MNT"; }

# Inputs: the py3 layer blobs (OCI layout) and a bucket holding the OCI archive.
M=$(python3 -c "import json;i=json.load(open('$IMG/oci/index.json'));print([m['digest'] for m in i['manifests'] if m.get('annotations',{}).get('org.opencontainers.image.ref.name')=='py3'][0].split(':')[1])")
LAYERS=()
for L in $(python3 -c "import json;m=json.load(open('$IMG/oci/blobs/sha256/$M'));print(' '.join(l['digest'].split(':')[1] for l in m['layers']))"); do
    LAYERS+=("$IMG/oci/blobs/sha256/$L")
done
BUCKET=$W/bucket
mkdir -p "$BUCKET/images"
ln "$IMG/py-oci.tar" "$BUCKET/images/py.tar" 2>/dev/null || cp "$IMG/py-oci.tar" "$BUCKET/images/py.tar"
cat "${LAYERS[@]}" "$BUCKET/images/py.tar" > /dev/null # warm the page cache

# The tools. Each writes only under $MNT and returns non-zero on failure.
run_tarpool() {
    "$BIN" --state-dir "$MNT/state" run --once --jobs 1 --source "$BUCKET" --backend overlay || return 1
}
prep_tarpool() { mkdir -p "$MNT/state" && cp -a "$W/cache" "$MNT/state/cache"; }
prep_tarpool_unpack() {
    prep_tarpool || return 1
    # (In a subshell, so the shell's "Killed" report goes nowhere.)
    ( TARPOOL_FAILPOINTS=before:unpack-layers "$BIN" --state-dir "$MNT/state" run --once --jobs 1 \
        --source "$BUCKET" --backend overlay > "$W/log.prep" 2>&1; exit $? ) 2>/dev/null
    [ $? = 137 ] || { echo "the preparing run did not stop before unpack-layers" > "$W/why"; return 1; }
    sync -f "$MNT"
}
run_tarpool_unpack() { run_tarpool; }
prep_tarpool_native() { prep_tarpool_unpack; }
run_tarpool_native() {
    TARPOOL_BENCH_NATIVE_CHECK=1 "$NATIVE_BIN" --state-dir "$MNT/state" run --once --jobs 1 \
        --source "$BUCKET" --backend overlay || return 1
}
run_gnu_tar() {
    mkdir -p "$MNT/rootfs" || return 1
    for L in "${LAYERS[@]}"; do tar -xzf "$L" -C "$MNT/rootfs" || return 1; done
}
run_pigz_tar() {
    mkdir -p "$MNT/rootfs" || return 1
    for L in "${LAYERS[@]}"; do pigz -dc "$L" | tar -x -C "$MNT/rootfs" || return 1; done
}
run_umoci() { umoci unpack --image "$IMG/oci:py3" "$MNT/bundle" || return 1; }
prep_containerd() { # daemon with its root on the volume; not timed
    local c=$W/ctrd
    rm -rf "$c"; mkdir -p "$c"
    cat > "$c/config.toml" <<CFG
version = 2
root = "$MNT/containerd"
state = "$c/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$c/sock"
CFG
    containerd --config "$c/config.toml" > "$c/log" 2>&1 &
    CTRD_PID=$!
    local i
    for i in $(seq 100); do
        [ -S "$c/sock" ] && return 0
        kill -0 "$CTRD_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "containerd did not start: $(tail -n 1 "$c/log" | cut -c1-200)" > "$W/why"
    stop_containerd
    return 1
}
run_containerd() {
    ctr --address "$W/ctrd/sock" -n bench images import --snapshotter overlayfs "$BUCKET/images/py.tar" || return 1
}
post_containerd() { stop_containerd; }

# measure TOOL NAME: fresh volume, prep (untimed), tool + sync (timed), unmount.
# Appends "NAME SECONDS" to $W/times, or marks the tool unavailable.
measure() {
    local fn=$1 name=$2 s e
    if [ -n "${UNAVAILABLE[$name]:-}" ]; then return 0; fi
    vol
    if declare -F "prep_$fn" >/dev/null && ! "prep_$fn"; then
        UNAVAILABLE[$name]=$(cat "$W/why" 2>/dev/null || echo "setup failed"); unvol; return 0
    fi
    s=$(now)
    if "run_$fn" > "$W/log.$name" 2>&1 && syncvol; then
        e=$(now)
        echo "$name $(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.3f", e-s}')" >> "$W/times"
    else
        UNAVAILABLE[$name]="failed: $(tail -n 1 "$W/log.$name" | cut -c1-200)"
    fi
    if declare -F "post_$fn" >/dev/null; then "post_$fn"; fi
    unvol
}

echo "tarpool unpack on fresh loop-mounted ext4 ($VOLSIZE sparse file, mkfs.ext4 ${MKFS_OPTS[*]}), synced"
echo "image: py3 from $IMG ($(du -b "$IMG/py-oci.tar" | cut -f1) bytes OCI archive, ${#LAYERS[@]} gzip layers); runs: $RUNS; drop caches: $DROP_CACHES"
echo "tarpool: $BIN"
echo "peers: $(tar --version | head -n1); pigz $(pigz --version 2>&1 | awk '{print $2}'); umoci $(umoci --version 2>/dev/null | awk '{print $3}'); $(containerd --version 2>/dev/null | awk '{print "containerd", $3}')"
echo

# Cold tarpool run (empty compiled-guest cache), once; keeps the cache it fills.
vol
s=$(now)
if ! "$BIN" --state-dir "$MNT/state" run --once --jobs 1 --source "$BUCKET" --backend overlay > "$W/log.cold" 2>&1; then
    echo "tarpool failed:" >&2; tail -n 20 "$W/log.cold" >&2; exit 1
fi
syncvol; e=$(now)
COLD=$(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.3f", e-s}')
cp -a "$MNT/state/cache" "$W/cache"
unvol

# Peak RSS of one (warm-cache) tarpool run, outside the timings.
vol; prep_tarpool
/usr/bin/time -f %M -o "$W/rss" "$BIN" --state-dir "$MNT/state" run --once --jobs 1 --source "$BUCKET" --backend overlay > "$W/log.rss" 2>&1 || true
RSS=$(tail -n 1 "$W/rss")
unvol

TOOLS=(tarpool tarpool_unpack tarpool_native gnu_tar pigz_tar umoci containerd)
NAMES=(tarpool tarpool-unpack tarpool-native gnu-tar pigz-tar umoci containerd)
N=${#TOOLS[@]}
for run in $(seq "$RUNS"); do
    for k in $(seq 0 $((N - 1))); do
        j=$(( (k + run - 1) % N ))
        measure "${TOOLS[$j]}" "${NAMES[$j]}"
    done
done

stats() { # name -> "median min max" or nothing
    grep "^$1 " "$W/times" 2>/dev/null | cut -d' ' -f2 | sort -g |
        awk '{a[NR]=$1} END {if (NR) printf "%s %s %s\n", a[int((NR+1)/2)], a[1], a[NR]}'
}
read -r TP _ <<<"$(stats tarpool)" || true
[ -n "${TP:-}" ] || { echo "tarpool: no timings (${UNAVAILABLE[tarpool]:-})"; exit 0; }
read -r TU _ <<<"$(stats tarpool-unpack)" || true
printf '%-15s %8s %8s %8s   %12s %15s\n' tool "median" "min" "max" "tarpool/tool" "tp-unpack/tool"
for name in "${NAMES[@]}"; do
    if [ -n "${UNAVAILABLE[$name]:-}" ] && ! grep -q "^$name " "$W/times"; then
        echo "$name: unavailable (${UNAVAILABLE[$name]})"; continue
    fi
    read -r med min max <<<"$(stats "$name")"
    printf '%-15s %8.2f %8.2f %8.2f   %12.2f %15s\n' "$name" "$med" "$min" "$max" \
        "$(awk -v a="$TP" -v b="$med" 'BEGIN{print a/b}')" \
        "$(awk -v a="${TU:-}" -v b="$med" 'BEGIN{if (a == "") print "-"; else printf "%.2f", a/b}')"
    if [ -n "${UNAVAILABLE[$name]:-}" ]; then echo "  ($name: later runs skipped, ${UNAVAILABLE[$name]})"; fi
done
echo
read -r TN _ <<<"$(stats tarpool-native)" || true
if [ -n "${TU:-}" ] && [ -n "${TN:-}" ]; then
    echo "the WebAssembly tar check's cost: tarpool-unpack / tarpool-native = $(awk -v a="$TU" -v b="$TN" 'BEGIN{printf "%.3f", a/b}') (target <= 1.10)"
fi
echo "tarpool cold (empty compiled-guest cache, once): ${COLD} s"
echo "tarpool peak RSS (one warm run): ${RSS} KB"
echo "notes: tarpool's time includes copying the ~81 MB archive into its blob store on the volume and"
echo "  verifying digests; gnu-tar and pigz-tar apply no whiteouts (the .wh. files are left as files)"
echo "  and check no digests; containerd's includes its content store; times in seconds, per run:"
sort -s -k1,1 "$W/times" | awk '{r[$1]=r[$1] " " $2} END {for (t in r) print "  " t ":" r[t]}' | sort
exit 0
