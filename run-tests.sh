#!/usr/bin/env bash
# The whole test suite: formatting, lints, the guests' and host's unit tests,
# the end-to-end tests (real binary, real overlay mounts, SIGKILLs), and the
# thin-pool tests on a real kernel's dm-thin inside a VM.
# Needs root (the tests mount overlays).
set -euo pipefail
cd "$(dirname "$0")"
./deploy/install-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo fmt --all --check
# The failpoints feature (test machinery, not in shipped builds) is on for
# the tests: the end-to-end tests need it. The build without it is linted too.
cargo clippy --locked --workspace --all-targets --features tarpool/failpoints -- -D warnings
cargo clippy --locked -p tarpool --lib --bins -- -D warnings
# The example steps, built as docs/steps.md says, outside the workspace (the
# e2e tests load them): formatting, their unit tests, then the component.
for example in examples/*/; do
    (cd "$example" && cargo fmt --check && cargo test --locked --quiet \
        && cargo build --locked --quiet --target wasm32-wasip2 --release)
done
# The complete steps docs/steps.md shows build as the page says.
tests/docs/steps-snippets.sh
# The workspace's tests include the layout test (tests/layout): it fails on an
# import cycle between host modules or a file over 600 lines of non-test code.
cargo test --locked --workspace --features tarpool/failpoints
# The thin-pool backend on a real kernel's dm-thin, in one VM boot; the
# worker's confinement tests run there too, on that kernel's Landlock. The
# same arguments as above: nothing is rebuilt, cargo names the executable.
e2e=$(cargo test --locked --workspace --features tarpool/failpoints --no-run --message-format=json \
    | python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e" and m.get("executable"):
        print(m["executable"])')
tests/vm/thinpool.sh target/debug/tarpool "$e2e"
