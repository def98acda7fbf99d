#!/usr/bin/env bash
# The whole test suite: formatting, lints, the guests' and host's unit tests,
# and the end-to-end tests (real binary, real overlay mounts, SIGKILLs).
# Needs root (the tests mount overlays).
set -euo pipefail
cd "$(dirname "$0")"
./deploy/install-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
