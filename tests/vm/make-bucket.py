#!/usr/bin/env python3
"""Builds the thin-pool VM test's buckets as raw-layer images (images/NAME/N.tar),
with GNU-tar-compatible archives from Python's tarfile, and writes the sha256
of selected files so the test can check activations byte for byte.

  make-bucket.py OUT

OUT/families/images/fam{a,b,c}/{1..5}.tar: the exercise's bucket in miniature.
Layers 1-3 are identical across the three families (shared chain IDs); 4-5
differ. Layer 4 deletes a layer-1 file (whiteout) and replaces a directory
(opaque); about 274 MB of unique layer tar bytes, about 650 MB if each family
were flattened.
OUT/small/images/small/{1,2}.tar: a few small files.
OUT/big/images/big/1.tar: 200 MB, bigger than the exhaustion test's pool.
OUT/medium/images/medium/1.tar: 40 MB.
OUT/shell/images/shell/1.tar: the host's static busybox, for `tarpool exec`.
OUT/expect.json: {image: {path: sha256 or null for must-not-exist}}.
"""
import hashlib, io, json, os, random, sys, tarfile

out = sys.argv[1]
rng = random.Random(1234)
expect = {}


def blob(n):
    return rng.randbytes(n)


def add_file(t, path, data, mode=0o644):
    ti = tarfile.TarInfo(path)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = 1700000000
    t.addfile(ti, io.BytesIO(data))


def add_dir(t, path):
    ti = tarfile.TarInfo(path)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    ti.mtime = 1700000000
    t.addfile(ti)


def add_empty(t, path):
    add_file(t, path, b"")


def layer(path, build):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        build(t)
    return os.path.getsize(path)


def bulk(t, prefix, total, big=4 << 20, small=200, seed_files=None):
    """`small` small files plus big files up to `total` bytes."""
    add_dir(t, prefix)
    files = {}
    for i in range(small):
        d = blob(rng.randint(0, 3000))
        add_file(t, f"{prefix}/s{i:04d}", d)
        files[f"{prefix}/s{i:04d}"] = d
    left = total - sum(len(v) for v in files.values())
    i = 0
    while left > 0:
        d = blob(min(big, left))
        add_file(t, f"{prefix}/b{i:03d}.bin", d)
        files[f"{prefix}/b{i:03d}.bin"] = d
        left -= len(d)
        i += 1
    return files


def sha(d):
    return hashlib.sha256(d).hexdigest()


shared = {}
sizes = {"unique": 0, "flattened": 0}
base = os.path.join(out, "families", "images")
shared_layers = []
for n, mb in [(1, 80), (2, 60), (3, 50)]:
    tmp = os.path.join(out, "shared", f"{n}.tar")

    def build(t, n=n, mb=mb):
        if n == 1:
            add_dir(t, "etc")
            add_file(t, "etc/os-release", b"ID=tarpool-vm\n")
            add_file(t, "etc/doomed", b"deleted by layer 4\n")
            add_dir(t, "opt")
            add_dir(t, "opt/app")
            add_file(t, "opt/app/old", b"replaced by an opaque dir\n")
        shared.update(bulk(t, f"l{n}", mb << 20))

    sizes["unique"] += layer(tmp, build)
    shared_layers.append(tmp)

for fam in "abc":
    d = os.path.join(base, f"fam{fam}")
    os.makedirs(d, exist_ok=True)
    for n, tmp in enumerate(shared_layers, 1):
        dst = os.path.join(d, f"{n}.tar")
        if not os.path.exists(dst):
            os.link(tmp, dst)
        sizes["flattened"] += os.path.getsize(tmp)
    own = {}

    def l4(t):
        add_dir(t, "etc")
        add_empty(t, "etc/.wh.doomed")
        add_dir(t, "opt/app")
        add_empty(t, "opt/app/.wh..wh..opq")
        add_file(t, "opt/app/new", f"family {fam}\n".encode())
        own.update(bulk(t, f"f{fam}4", 14 << 20, small=50))

    def l5(t):
        own.update(bulk(t, f"f{fam}5", 14 << 20, small=50))
        add_file(t, "etc/family", fam.encode())

    for n, b in [(4, l4), (5, l5)]:
        s = layer(os.path.join(d, f"{n}.tar"), b)
        sizes["unique"] += s
        sizes["flattened"] += s
    e = {p: sha(v) for p, v in list(shared.items())[::97]}
    e.update({p: sha(v) for p, v in list(own.items())[::31]})
    e["etc/os-release"] = sha(b"ID=tarpool-vm\n")
    e["etc/family"] = sha(fam.encode())
    e["opt/app/new"] = sha(f"family {fam}\n".encode())
    e["etc/doomed"] = None
    e["opt/app/old"] = None
    expect[f"fam{fam}"] = e

small = {}
for n in (1, 2):
    def b(t, n=n):
        add_dir(t, "data")
        for i in range(20):
            d = blob(1000 + i)
            add_file(t, f"data/{n}-{i}", d)
            small[f"data/{n}-{i}"] = sha(d)
    layer(os.path.join(out, "small", "images", "small", f"{n}.tar"), b)
expect["small"] = small
med = {}
layer(os.path.join(out, "medium", "images", "medium", "1.tar"),
      lambda t: med.update({p: sha(v) for p, v in bulk(t, "m", 40 << 20).items()}))
expect["medium"] = dict(list(med.items())[::17])
layer(os.path.join(out, "big", "images", "big", "1.tar"), lambda t: bulk(t, "big", 200 << 20))
# A busybox image, for `tarpool exec` on a thin-pool activation.
def shell(t):
    add_dir(t, "bin")
    with open("/bin/busybox", "rb") as f:
        add_file(t, "bin/busybox", f.read(), 0o755)
    for applet in ("sh", "echo", "cat", "hostname", "id", "ls", "pwd", "head", "tr", "stat", "seq", "sleep"):
        ti = tarfile.TarInfo(f"bin/{applet}")
        ti.type = tarfile.SYMTYPE
        ti.linkname = "busybox"
        ti.mtime = 1700000000
        t.addfile(ti)
    add_dir(t, "etc")
    add_file(t, "etc/marker", b"shell image\n")
layer(os.path.join(out, "shell", "images", "shell", "1.tar"), shell)
expect["_sizes"] = sizes
with open(os.path.join(out, "expect.json"), "w") as f:
    json.dump(expect, f)
print(f"families: {sizes['unique'] / 1e6:.1f} MB unique layer tars, "
      f"{sizes['flattened'] / 1e6:.1f} MB flattened")
