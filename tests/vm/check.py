#!/usr/bin/env python3
"""Checks for tests/vm/inside.sh (runs inside the VM).

  check.py consistent STATE POOL   the registry in STATE/state.db, `dmsetup ls`
                                   and the pool's own device list (thin_ls on a
                                   metadata snapshot) agree; nothing in flight
  check.py tree EXPECT IMAGE DIR   files of IMAGE under DIR match expect.json
  check.py field JSON PATH...      prints a field of a JSON document on stdin
"""
import hashlib, json, os, sqlite3, subprocess, sys


def sh(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def consistent(state, pool):
    db = sqlite3.connect(os.path.join(state, "state.db"))
    rows = db.execute(
        "SELECT dev_id, owner, state, active FROM thin_devices WHERE pool = ?", (pool,)
    ).fetchall()
    bad = [r for r in rows if r[2] != "ready"]
    assert not bad, f"devices left in flight: {bad}"
    running = db.execute(
        "SELECT id, op, dev_id FROM pool_ops WHERE pool = ? AND state = 'running'", (pool,)
    ).fetchall()
    assert not running, f"pool operations still marked running: {running}"
    prefix = f"{pool}-thin-"
    listed = sh("dmsetup", "ls").split()
    nodes = {int(n[len(prefix):]) for n in listed if n.startswith(prefix)}
    want_nodes = {r[0] for r in rows if r[3]}
    assert nodes == want_nodes, f"dmsetup ls has {sorted(nodes)}, the registry wants {sorted(want_nodes)} active"
    with open(os.path.join(state, "thinpool", "pool.json")) as f:
        meta_file = json.load(f)["meta_file"]
    meta = sh("losetup", "-j", meta_file).split(":")[0]
    sh("dmsetup", "message", pool, "0", "reserve_metadata_snap")
    try:
        out = sh("thin_ls", "--metadata-snap", "--no-headers", "-o", "DEV", meta)
    finally:
        sh("dmsetup", "message", pool, "0", "release_metadata_snap")
    in_pool = {int(x) for x in out.split()}
    in_db = {r[0] for r in rows}
    assert in_pool == in_db, f"the pool holds thin ids {sorted(in_pool)}, the registry {sorted(in_db)}"
    print(f"consistent: {len(in_db)} thin devices, {len(nodes)} active, pool and registry agree")


def tree(expect_file, image, root):
    with open(expect_file) as f:
        expect = json.load(f)[image]
    for path, digest in expect.items():
        p = os.path.join(root, path)
        if digest is None:
            assert not os.path.lexists(p), f"{image}: {path} should be gone"
            continue
        with open(p, "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        assert got == digest, f"{image}: {path} has sha256 {got}, expected {digest}"
    assert not os.path.exists(os.path.join(root, "lost+found")), "lost+found leaked into the image"
    print(f"tree {image}: {len(expect)} paths match")


def field(*path):
    v = json.load(sys.stdin)
    for p in path:
        v = v[int(p)] if isinstance(v, list) else v[p]
    print(f"{v:.0f}" if isinstance(v, float) else v)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"consistent": consistent, "tree": tree, "field": field}[cmd](*args)
