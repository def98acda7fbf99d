#!/usr/bin/env bash
# Builds every complete step in docs/steps.md (each ```rust block that calls
# `export!`) as the page says: a crate of its own with the page's Cargo.toml
# and a copy of wit/tarpool.wit, for wasm32-wasip2, warnings denied, with
# the dependency versions the examples lock (offline: the lock names the
# example crate, so cargo renames its root package and changes nothing
# else). A page whose code does not build fails the suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import os, re, sys
work = sys.argv[1]
page = open("docs/steps.md").read()
toml = next(b for b in re.findall(r"```toml\n(.*?)```", page, re.S) if "[package]" in b)
steps = [b for b in re.findall(r"```rust\n(.*?)```", page, re.S) if "export!(" in b]
if len(steps) < 2:
    sys.exit(f"docs/steps.md: expected the two complete steps, found {len(steps)}")
for i, code in enumerate(steps):
    crate = os.path.join(work, f"step{i}")
    os.makedirs(os.path.join(crate, "src"))
    open(os.path.join(crate, "Cargo.toml"), "w").write(toml + "\n[workspace]\n")
    open(os.path.join(crate, "src", "lib.rs"), "w").write(code)

PY
for crate in "$work"/step*/; do
    mkdir -p "$crate/wit"
    cp wit/tarpool.wit "$crate/wit/"
    cp examples/inspect-rules/Cargo.lock "$crate/"
    (cd "$crate" && CARGO_TARGET_DIR="$PWD/../target" RUSTFLAGS="-D warnings" \
        cargo build --offline --quiet --target wasm32-wasip2 --release)
done
echo "docs/steps.md: $(ls -d "$work"/step*/ | wc -l) steps build"
