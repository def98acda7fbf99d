#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian bookworm host (run as root) for building, testing and
# running tarpool. Re-runs are fast and need no network once everything is present:
# apt-get runs only if some package is missing, rustup only if the wasm target is missing.
# Rust stable (rustup, cargo) is assumed to be installed already.
set -euo pipefail

die() { echo "install-deps: error: $*" >&2; exit 1; }

# build: gcc + libc6-dev (rustc's linker; C code of zstd-sys and rusqlite's bundled SQLite;
#        tests/e2e/exec_probe.c, linked static by the exec tests),
#        pkg-config, ca-certificates (cargo fetching crates over TLS),
#        libdevmapper-dev + libclang-dev (the devicemapper crate's ioctl bindings)
# run (thin pool): dmsetup, e2fsprogs (mkfs.ext4), util-linux (losetup)
# tests/fixtures: GNU tar, gzip, zstd, pigz, python3, umoci, skopeo
# exec (OCI runtimes): crun (the default), runc (the tests run both)
# registry source tests: docker-registry (distribution v2), apache2-utils (htpasswd),
#        openssl (the test token server's key and certificate)
# tests/vm (dm-thin on a real kernel): linux-image-amd64, qemu-system-x86,
#        busybox-static (virtme-ng's init), thin-provisioning-tools (thin_ls)
PACKAGES=(
    gcc libc6-dev pkg-config ca-certificates libdevmapper-dev libclang-dev
    dmsetup e2fsprogs util-linux
    tar gzip zstd pigz python3 umoci skopeo
    crun runc
    docker-registry apache2-utils openssl
    linux-image-amd64 qemu-system-x86 busybox-static thin-provisioning-tools
)
WASM_TARGET=wasm32-wasip2

[ "$(id -u)" = 0 ] || die "must run as root"
command -v dpkg-query >/dev/null || die "dpkg-query not found: this script is for Debian"

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update || die "apt-get update failed"
    apt-get install -y --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed for: ${missing[*]}"
else
    echo "install-deps: Debian packages already installed"
fi

# rustup may live in root's cargo home rather than on PATH
if ! command -v rustup >/dev/null && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/rustup" ]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v rustup >/dev/null || die "rustup not found (install Rust stable via rustup first)"

if rustup target list --installed | grep -qx "$WASM_TARGET"; then
    echo "install-deps: rust target $WASM_TARGET already installed"
else
    echo "install-deps: adding rust target $WASM_TARGET"
    rustup target add "$WASM_TARGET" || die "rustup target add $WASM_TARGET failed"
fi

# tests/e2e/s3.rs: a real S3-compatible server (moto) on loopback, and boto3
# for the benchmark's reference client; from PyPI, only when missing.
if python3 -c 'import moto.server, boto3' 2>/dev/null; then
    echo "install-deps: moto[server] already installed"
else
    echo "install-deps: installing moto[server] from PyPI"
    python3 -m pip --version >/dev/null 2>&1 || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update && apt-get install -y --no-install-recommends python3-pip python3-venv
    } || die "installing pip failed"
    python3 -m pip install --quiet 'moto[server]>=5,<6' boto3 \
        || python3 -m pip install --quiet --break-system-packages 'moto[server]>=5,<6' boto3 \
        || die "pip install moto[server] failed"
fi

# tests/vm: virtme-ng boots the kernel above with the host's files visible.
if command -v vng >/dev/null; then
    echo "install-deps: virtme-ng already installed"
else
    echo "install-deps: installing virtme-ng from PyPI"
    python3 -m pip install --quiet virtme-ng \
        || python3 -m pip install --quiet --break-system-packages virtme-ng \
        || die "pip install virtme-ng failed"
    hash -r
fi

# crun refuses a hybrid cgroup host (v1 controllers, a v2 `unified` mount)
# while any controller is still on the v2 hierarchy ("cgroups in hybrid mode
# not supported, drop all controllers from cgroupv2"). Bind each such
# controller to a v1 hierarchy of its own, as the others are. Only on such a
# host; a pure v2 host (/sys/fs/cgroup is cgroup2) needs nothing.
if [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
    for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
        echo "install-deps: binding the $c cgroup controller to a v1 hierarchy (for crun on a hybrid host)"
        mkdir -p "/sys/fs/cgroup/$c"
        mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || die "mounting the $c cgroup controller"
    done
fi

echo "install-deps: done"
