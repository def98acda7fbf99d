#!/usr/bin/env bash
# Real images in every supported format end ready with the root filesystem
# an independent tool makes of them.
#
# Images: Debian bookworm minbase (`deb`) and minbase + python3 + a whiteout
# layer (`py3`), built by ../shared/bench/make-images.sh (mmdebstrap, umoci,
# skopeo). tarpool gets them as: ad-hoc raw layers, docker-save archive, OCI
# archive (gzip, and zstd re-compressed by skopeo), exploded OCI layout, flat
# rootfs tar, and an LXC-style metadata.yaml + rootfs.tar.gz. Each activation
# is listed with tests/fixtures/tree.py (paths, types, modes, owners, sizes,
# content hashes, link targets, hardlink groups) and compared with
# `umoci unpack` of the same image. Device nodes are left out of the
# comparison because the default policy skips them (audited).
#
# Usage: tests/real-images.sh [IMGDIR]   (root; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
IMG=${1:-/tmp/realimgs}
. tests/bench/lib.sh
ensure_tarpool
ensure_images "$IMG"
W=$(mktemp -d /var/tmp/tarpool-real.XXXX)
cleanup() {
    for a in "$W"/act-*; do [ -d "$a" ] && "$BIN" --state-dir "$W/s" deactivate "$(basename "$a")" >/dev/null 2>&1 || true; done
    rm -rf "$W"
}
trap cleanup EXIT
B="$W/bucket/images"
mkdir -p "$B/deb-lxc"
py3_layers "$IMG" "$B/py"
cp "$IMG/py-docker.tar" "$B/py-docker.tar"
cp "$IMG/py-oci.tar" "$B/py-oci.tar"
skopeo copy -q "oci:$IMG/oci:py3" "oci:$B/py-layout:py3"
skopeo copy -q --dest-compress-format zstd "oci:$IMG/oci:py3" "oci-archive:$B/py-zstd.tar:py:3"
cp "$IMG/deb-docker.tar" "$B/deb-docker.tar"
cp "$IMG/deb-flat.tar" "$B/deb-flat.tar"
gzip -c "$IMG/deb-flat.tar" > "$B/deb-lxc/rootfs.tar.gz"
printf 'architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: Debian bookworm minbase\n  os: debian\n  release: bookworm\n' > "$B/deb-lxc/metadata.yaml"

umoci unpack --image "$IMG/oci:py3" "$W/ref-py" >/dev/null
umoci unpack --image "$IMG/oci:deb" "$W/ref-deb" >/dev/null
python3 tests/fixtures/tree.py "$W/ref-py/rootfs" | grep -v '^[cb] ' > "$W/ref-py.tree"
python3 tests/fixtures/tree.py "$W/ref-deb/rootfs" | grep -v '^[cb] ' > "$W/ref-deb.tree"

s=$(date +%s.%N)
"$BIN" --state-dir "$W/s" run --once --jobs 2 --source "$W/bucket" >/dev/null || true
e=$(date +%s.%N)
echo "run --once --jobs 2 over $(ls "$B" | wc -l) images: $(echo "$e - $s" | bc) s"
fail=0
for img in py py-docker py-oci py-layout py-zstd deb-docker deb-flat deb-lxc; do
    ref=ref-py; case $img in deb-*) ref=ref-deb;; esac
    st=$("$BIN" --state-dir "$W/s" status --json | python3 -c "import json,sys;d={i['name']:i for i in json.load(sys.stdin)['images']};i=d['$img'];print(' '.join(x for x in (i['state'], i.get('format') or '', i.get('error') or '') if x))")
    if [ "${st%% *}" != ready ]; then echo "FAIL $img: $st"; fail=1; continue; fi
    "$BIN" --state-dir "$W/s" activate "$img" --as "act-$img" --mount "$W/act-$img" >/dev/null
    python3 tests/fixtures/tree.py "$W/act-$img" > "$W/$img.tree"
    "$BIN" --state-dir "$W/s" deactivate "act-$img" >/dev/null
    if diff -q "$W/$ref.tree" "$W/$img.tree" >/dev/null; then
        echo "ok   $img (${st#ready }): $(wc -l < "$W/$img.tree") lines, identical to umoci unpack"
    else
        echo "FAIL $img: differs from umoci unpack:"; diff "$W/$ref.tree" "$W/$img.tree" | head -20; fail=1
    fi
done
exit $fail
