#!/usr/bin/env bash
# The thin-pool backend on a real kernel's dm-thin: this machine's kernel has
# no device-mapper, so this boots Debian's kernel (linux-image-amd64) under
# QEMU with virtme-ng (software emulation: nested KVM hangs here), with the
# host's files visible, and runs tests/vm/inside.sh there. One boot.
#   tests/vm/thinpool.sh [TARPOOL_BINARY [E2E_TEST_BINARY]]
# TARPOOL_BINARY defaults to target/debug/tarpool. With E2E_TEST_BINARY (the
# end-to-end test executable, built with the failpoints feature) the worker's
# confinement tests run on the VM's kernel too.
set -euo pipefail
cd "$(dirname "$0")/../.."
# A private copy: a rebuild during the (long) VM run must not swap the
# binary under the running processes.
mkdir -p target/vm
cp "${1:-target/debug/tarpool}" target/vm/tarpool
T=$(realpath target/vm/tarpool)
E=
if [ -n "${2:-}" ]; then
    cp "$2" target/vm/e2e
    E=$(realpath target/vm/e2e)
fi
KERNEL=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1)
[ -n "$KERNEL" ] || { echo "thinpool.sh: no Debian kernel in /boot (apt-get install linux-image-amd64)" >&2; exit 2; }
command -v vng >/dev/null || { echo "thinpool.sh: vng not found (pip install virtme-ng)" >&2; exit 2; }
B=$(realpath target)/vm-buckets
rm -rf "$B"
python3 tests/vm/make-bucket.py "$B"
start=$(date +%s)
set +e
timeout 2400 vng -r "$KERNEL" --disable-kvm --cpus 2 --memory 5G \
    --exec "$(pwd)/tests/vm/inside.sh $T $B $E" 2>&1 | tee target/vm-thinpool.log
rc=${PIPESTATUS[0]}
set -e
echo "thinpool.sh: VM run took $(( $(date +%s) - start )) s, exit $rc"
rm -rf "$B"
grep -q '^vm: PASS' target/vm-thinpool.log || rc=${rc/#0/1}
exit "$rc"
