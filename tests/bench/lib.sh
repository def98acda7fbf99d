# Shared by the benchmark and real-image scripts (sourced, from the repo root).

# ensure_tarpool: a release build at $BIN (default target/release/tarpool,
# brought up to date with the sources: a stale one would measure old code).
ensure_tarpool() {
    BIN=${TARPOOL_BIN:-target/release/tarpool}
    [ -n "${TARPOOL_BIN:-}" ] || cargo build --release --locked -p tarpool
}

# ensure_images IMGDIR: the real images of ../shared/bench/make-images.sh
# (mmdebstrap + umoci + skopeo), built there if missing.
ensure_images() {
    if [ ! -d "$1/oci" ]; then
        local make=${MAKE_IMAGES:-../shared/bench/make-images.sh}
        [ -x "$make" ] || { echo "no images in $1 and no $make to build them" >&2; exit 1; }
        "$make" "$1"
    fi
}

# py3_layers IMGDIR OUTDIR: the py3 image's layers, uncompressed, as
# OUTDIR/1.tar, 2.tar, ... (an ad-hoc image).
py3_layers() {
    local img=$1 out=$2 m n=1 l
    mkdir -p "$out"
    m=$(python3 -c "import json;i=json.load(open('$img/oci/index.json'));print([m['digest'] for m in i['manifests'] if m.get('annotations',{}).get('org.opencontainers.image.ref.name')=='py3'][0].split(':')[1])")
    for l in $(python3 -c "import json;m=json.load(open('$img/oci/blobs/sha256/$m'));print(' '.join(l['digest'].split(':')[1] for l in m['layers']))"); do
        gzip -dc "$img/oci/blobs/sha256/$l" > "$out/$n.tar"; n=$((n+1))
    done
}

# now: the time in seconds, with nanoseconds. median: of the numbers on stdin.
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
