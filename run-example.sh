#!/usr/bin/env bash
# The main job on the embedded default: the repository's example bucket
# (tests/example-bucket) into the best backend this kernel supports, then
# the result, and one activation mounted to show its files.
set -euo pipefail
cd "$(dirname "$0")"
./deploy/install-deps.sh >/dev/null
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --release --locked -p tarpool
STATE=${TARPOOL_STATE:-/tmp/tarpool-example}
tp() { target/release/tarpool --state-dir "$STATE" "$@"; }
rc=0
tp run --once --backend auto || rc=$?
echo
tp status
mnt="$STATE/example-mount"
tp deactivate example >/dev/null 2>&1 || true
if tp activate adhoc --as example --mount "$mnt"; then
    echo "files of image adhoc, mounted read-write at $mnt:"
    ls -la "$mnt" "$mnt/etc"
    tp deactivate example >/dev/null
fi
exit $rc
