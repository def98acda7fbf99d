#!/usr/bin/env python3
"""Regenerates the fuzz seed corpora under tests/fuzz/seeds/<target>/.

Deterministic (fixed mtimes, owners and order; gzip without a timestamp;
python3's standard library only): running it twice gives the same files.
Sources: the example bucket (tests/example-bucket, trimmed to its
end-of-archive marker, small members only) and structured inputs built
here, in each target's input format (see fuzz_targets/*.rs):

  tarcheck, tarcheck_vs_tar  selector byte + tar stream
  extract                    tar stream (a layer)
  classify                   the blob's leading bytes
  manifest                   kind byte + NUL-separated `name\\x01content`
  rootfs_dir                 member-bits byte + metadata.yaml
  names                      newline-separated object keys
  user                       User spec NUL /etc/passwd NUL /etc/group
  listing                    list byte (even: catalog, odd: tags) + body NUL Link

Run from anywhere: python3 tests/fuzz/seeds.py
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
BUCKET = os.path.join(ROOT, "tests", "example-bucket", "images")
OUT = os.path.join(HERE, "seeds")
MAX_SEED = 40 << 10  # bytes per seed
MTIME = 1_700_000_000

# ---------------------------------------------------------------------------
# A raw tar writer (full control over every header byte).


def octal(v, width):
    return ("%0*o" % (width - 1, v)).encode() + b"\0"


def b256(v, width):
    return bytes([0x80]) + v.to_bytes(width - 1, "big")


def header(name, flag, size=0, mode=0o644, link=b"", uid=0, gid=0,
           magic=b"ustar\x0000", prefix=b"", dev=(0, 0), size_field=None,
           signed=False):
    b = bytearray(512)
    b[0:len(name)] = name
    b[100:108] = octal(mode, 8)
    b[108:116] = octal(uid, 8) if uid < 1 << 21 else b256(uid, 8)
    b[116:124] = octal(gid, 8)
    b[124:136] = size_field if size_field is not None else octal(size, 12)
    b[136:148] = octal(MTIME, 12)
    b[156] = flag
    b[157:157 + len(link)] = link
    b[257:265] = magic
    b[265:269] = b"root"
    b[297:301] = b"root"
    b[329:337] = octal(dev[0], 8)
    b[337:345] = octal(dev[1], 8)
    b[345:345 + len(prefix)] = prefix
    b[148:156] = b" " * 8
    s = sum((x - 256 if x > 127 else x) for x in b) if signed else sum(b)
    b[148:156] = ("%06o" % s).encode() + b"\0 "
    return bytes(b)


def pad(d):
    return d + b"\0" * (-len(d) % 512)


def records(recs):
    out = b""
    for k, v in recs:
        body = len(k) + len(v) + 3
        n = body + 1
        while body + len(str(n)) != n:
            n = body + len(str(n))
        out += str(n).encode() + b" " + k + b"=" + v + b"\n"
    return out


class Tar:
    def __init__(self):
        self.b = b""

    def h(self, *a, **k):
        self.b += header(*a, **k)
        return self

    def data(self, d):
        self.b += pad(d)
        return self

    def file(self, name, d, **k):
        return self.h(name, ord("0"), len(d), **k).data(d)

    def dir(self, name, **k):
        return self.h(name, ord("5"), mode=0o755, **k)

    def sym(self, name, target, **k):
        return self.h(name, ord("2"), mode=0o777, link=target, **k)

    def hard(self, name, target):
        return self.h(name, ord("1"), link=target)

    def pax(self, recs, flag=b"x"):
        p = records(recs)
        return self.h(b"./PaxHeaders/x", ord(flag), len(p)).data(p)

    def long(self, flag, name):
        p = name + b"\0"
        return self.h(b"././@LongLink", ord(flag), len(p),
                      magic=b"ustar  \0").data(p)

    def end(self):
        self.b += b"\0" * 1024
        return self.b


def cap_v2():
    v = bytearray(20)
    v[0:4] = (0x02000001).to_bytes(4, "little")
    v[4] = 0x20
    return bytes(v)


def synthetic():
    """(name, tar bytes): hostile and legitimate shapes tarcheck knows."""
    T = Tar
    long_name = b"d" * 120 + b"/" + b"f" * 120
    out = [
        ("ustar-basic", T().dir(b"etc/").file(b"etc/hostname", b"box\n")
         .sym(b"bin", b"usr/bin").file(b"usr/bin/sh", b"#!")
         .hard(b"usr/bin/bash", b"usr/bin/sh").end()),
        ("ustar-prefix", T().file(b"name", b"x", prefix=b"some/prefix").end()),
        ("gnu-longname-longlink", T().long("L", long_name).file(long_name[:99], b"long")
         .long("K", b"/" + long_name).long("L", b"l" * 150)
         .sym(b"l" * 99, b"t" * 99, magic=b"ustar  \0").end()),
        ("pax-path-linkpath-size", T().pax([(b"path", long_name)]).file(b"x", b"abc")
         .pax([(b"linkpath", b"/" + long_name)]).sym(b"lnk", b"")
         .pax([(b"size", b"5")]).file(b"f", b"").data(b"hello").end()),
        ("pax-xattrs", T().pax([(b"SCHILY.xattr.user.k", b"v"),
                               (b"SCHILY.xattr.security.capability", cap_v2()),
                               (b"SCHILY.xattr.trusted.overlay.opaque", b"y")])
         .file(b"bin/ping", b"\x7fELF", mode=0o4755)
         .pax([(b"LIBARCHIVE.xattr.user.a%20b", b"dmFsdWU=")]).dir(b"d")
         .pax([(b"mtime", b"1700000000.5"), (b"uid", b"1000"), (b"gid", b"1000"),
               (b"atime", b"1.25"), (b"comment", b"c")]).file(b"t", b"").end()),
        ("pax-global", T().pax([(b"comment", b"git")], flag=b"g").file(b"f", b"1").end()),
        ("whiteouts", T().dir(b"etc").file(b"etc/.wh.old", b"").dir(b"var/cache")
         .file(b"var/cache/.wh..wh..opq", b"").file(b"var/cache/new", b"n")
         .file(b".wh.tmp", b"").end()),
        ("opaque-root", T().file(b".wh..wh..opq", b"").file(b"a", b"b").end()),
        ("devices-fifo", T().h(b"dev/null", ord("3"), mode=0o666, dev=(1, 3))
         .h(b"dev/sda", ord("4"), mode=0o660, dev=(8, 0))
         .h(b"run/fifo", ord("6"), mode=0o600).end()),
        ("v7-and-predir", T().h(b"old/", 0, mode=0o755, magic=b"\0" * 8)
         .h(b"old/f", 0, 3, magic=b"\0" * 8).data(b"abc").end()),
        ("contiguous-base256", T().h(b"c", ord("7"), 1).data(b"c")
         .h(b"big-uid", ord("0"), 2, uid=1 << 30, size_field=b256(2, 12)).data(b"ab").end()),
        ("root-and-abs", T().dir(b"./").dir(b"/abs").file(b"/abs/f", b"x")
         .file(b".//a/./b", b"y").sym(b"abs-link", b"/etc/passwd")
         .hard(b"h", b"/abs/f").end()),
        ("duplicates", T().file(b"f", b"1").file(b"f", b"2").dir(b"d").dir(b"d").end()),
        ("signed-checksum", T().h("caf\u00e9".encode(), ord("0"), 1, signed=True)
         .data(b"s").end()),
        ("sparse-gnu", T().h(b"sparse", ord("S"), 0, magic=b"ustar  \0").end()),
        ("sparse-pax", T().pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")])
         .file(b"s", b"").end()),
        ("empty", b""),
        ("end-marker-only", T().end()),
        # Rejected shapes: near misses are where the branches are.
        ("nonzero-size-symlink", T().h(b"l", ord("2"), 512, link=b"t")
         .data(header(b"smuggled", ord("0"))).end()),
        ("nonzero-size-dir", T().h(b"d", ord("5"), 600).data(b"\7" * 600).file(b"f", b"1").end()),
        ("pax-size-conflict", T().pax([(b"size", b"2048")]).file(b"f", b"12345678")
         .sym(b"smuggled", b"/etc/shadow").end()),
        ("dotdot", T().file(b"../x", b"").end()),
        ("junk-after-end", T().file(b"f", b"1").end() + b"junk"),
        ("hardlink-to-whiteout", T().file(b"a", b"").hard(b"b", b".wh.a").end()),
    ]
    return out


def pytar(fmt, name):
    """A small tree written by Python's tarfile in `fmt`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        def add(n, typ, data=b"", mode=0o644, link=""):
            ti = tarfile.TarInfo(n)
            ti.type, ti.mode, ti.mtime = typ, mode, MTIME
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.linkname = link
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data else None)
        add("usr", tarfile.DIRTYPE, mode=0o755)
        add("usr/share/" + "long-name-" * 12 + "x.txt", tarfile.REGTYPE, b"long\n")
        add("usr/lib/libz.so", tarfile.SYMTYPE, mode=0o777, link="libz.so.1." + "9" * 110)
        add("usr/lib/libz.so.1", tarfile.REGTYPE, b"\x7fELF" * 8, mode=0o755)
        add("usr/lib/libz-hard.so.1", tarfile.LNKTYPE, link="usr/lib/libz.so.1")
        add("usr/share/caf\u00e9 menu.txt", tarfile.REGTYPE, b"menu\n")
        add("etc/.wh.obsolete", tarfile.REGTYPE)
        add("tmp/.wh..wh..opq", tarfile.REGTYPE)
        add("dev/null", tarfile.CHRTYPE, mode=0o666)
    return name, trim(buf.getvalue())


# ---------------------------------------------------------------------------
# The example bucket.


def tar_end(data):
    """Offset just after the last member (tarfile's view)."""
    t = tarfile.open(fileobj=io.BytesIO(data))
    t.getmembers()
    return t.offset


def trim(data, limit=None):
    """Up to the end-of-archive marker; with `limit`, only the members that
    end within `limit` bytes."""
    end = tar_end(data)
    if limit is not None and end > limit:
        t = tarfile.open(fileobj=io.BytesIO(data))
        end = 0
        for m in t.getmembers():
            stop = m.offset_data + (m.size + 511) // 512 * 512
            if stop > limit:
                break
            end = stop
    return data[:end] + b"\0" * 1024


def bucket_tars():
    """(name, layer tar) from the example bucket, trimmed."""
    out = []
    for d, names in [("adhoc", ["1", "2", "3"]), ("many", ["1", "2"])]:
        for n in names:
            with open(os.path.join(BUCKET, d, n + ".tar"), "rb") as f:
                out.append((f"bucket-{d}-{n}", trim(f.read(), 16 << 10)))
    with open(os.path.join(BUCKET, "dockersave.tar"), "rb") as f:
        ds = f.read()
    t = tarfile.open(fileobj=io.BytesIO(ds))
    for m in t.getmembers():
        if m.isfile() and m.name.endswith(".tar"):
            out.append((f"bucket-dockersave-layer-{m.name[:8]}",
                        trim(t.extractfile(m).read(), 8 << 10)))
    return out


def bucket_archives():
    """(name, image archive tar): docker save with its layers trimmed, and
    the OCI archive decompressed."""
    with open(os.path.join(BUCKET, "dockersave.tar"), "rb") as f:
        src = tarfile.open(fileobj=io.BytesIO(f.read()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if data is not None and m.name.endswith(".tar"):
                data = trim(data, 8 << 10)
                m.size = len(data)
            t.addfile(m, io.BytesIO(data) if data is not None else None)
    out = [("bucket-dockersave", trim(buf.getvalue()))]
    with open(os.path.join(BUCKET, "ociarchive.tar.gz"), "rb") as f:
        out.append(("bucket-ociarchive", trim(gzip.decompress(f.read()))))
    return out


def bucket_files():
    """Every object of the example bucket: (key, bytes)."""
    out = []
    for d, _, files in sorted(os.walk(BUCKET)):
        for n in sorted(files):
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out.append(("images/" + os.path.relpath(p, BUCKET), f.read()))
    return out


# ---------------------------------------------------------------------------
# Structured inputs of the manifest, rootfs_dir and names targets.


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def js(v):
    return json.dumps(v, sort_keys=True, separators=(",", ":")).encode()


def oci_unit(arches=(("amd64", None),), nested=0):
    """Members of an OCI layout whose blobs are text (no NUL or \\x01, which
    separate records of the manifest target's input)."""
    files = [("oci-layout", js({"imageLayoutVersion": "1.0.0"}))]
    blobs = []

    def blob(b):
        blobs.append(("blobs/sha256/" + sha(b)[7:], b))
        return {"digest": sha(b), "size": len(b)}

    entries = []
    for arch, variant in arches:
        layer = ("layer of " + arch).encode()
        config = js({
            "architecture": arch, "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"], "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"],
                       "WorkingDir": "/", "User": "0:0"},
            "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
        })
        manifest = js({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": dict(blob(config), mediaType="application/vnd.oci.image.config.v1+json"),
            "layers": [dict(blob(layer), mediaType="application/vnd.oci.image.layer.v1.tar")],
        })
        platform = {"architecture": arch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        entries.append(dict(blob(manifest), platform=platform,
                            mediaType="application/vnd.oci.image.manifest.v1+json"))
    for _ in range(nested):
        idx = js({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                  "manifests": entries})
        entries = [dict(blob(idx), mediaType="application/vnd.oci.image.index.v1+json")]
    files.append(("index.json", js({"schemaVersion": 2, "manifests": entries,
                                    "mediaType": "application/vnd.oci.image.index.v1+json"})))
    return files + blobs


def docker_unit():
    layer = b"layer"
    config = js({"architecture": "amd64", "os": "linux",
                 "config": {"Env": ["A=b"], "Cmd": ["/bin/sh"]},
                 "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}})
    cname = sha(config)[7:] + ".json"
    return [
        ("manifest.json", js([{"Config": cname, "RepoTags": ["x:latest"],
                               "Layers": ["abc/layer.tar"]}])),
        (cname, config),
        ("abc/layer.tar", layer),
        ("abc/VERSION", b"1.0"),
        ("repositories", js({"x": {"latest": "abc"}})),
    ]


def registry_unit(files, top):
    """An OCI layout's files as a registry serves them: `manifest` is `top`
    (or, with None, the first image manifest), and every blob is there as
    blobs/sha256/HEX and manifests/sha256/HEX."""
    out, first = [], None
    for name, content in files:
        if name.startswith("blobs/sha256/"):
            out.append((name, content))
            out.append(("manifests/" + name[len("blobs/"):], content))
            if first is None and b'"layers"' in content:
                first = content
    top_bytes = dict(files)[top] if top else first
    return [("manifest", top_bytes)] + out


def manifest_seed(kind, members):
    recs = []
    for name, content in members:
        if b"\0" in content or b"\1" in content:
            content = b""  # binary layers: only the name and size matter
        recs.append(name.encode() + b"\x01" + content)
    return bytes([kind]) + b"\0".join(recs)


def members_of_tar(data):
    t = tarfile.open(fileobj=io.BytesIO(data))
    return [(m.name, t.extractfile(m).read() if m.isfile() else b"")
            for m in t.getmembers() if not m.isdir()]


LXC_GOOD = b"""architecture: x86_64
creation_date: 1700000000
expiry_date: 1702592000
properties:
  architecture: x86_64
  description: Alpinelinux 3.18 x86_64 (20231115_13:00)
  name: alpinelinux-3.18-x86_64-default-20231115_13:00
  os: alpinelinux
  release: "3.18"
  variant: default
templates:
  /etc/hostname:
    when:
    - create
    - copy
    create_only: false
    template: hostname.tpl
    properties: {}
"""


# ---------------------------------------------------------------------------


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    seeds = {t: [] for t in ["tarcheck", "tarcheck_vs_tar", "extract", "classify",
                             "manifest", "rootfs_dir", "names", "user", "listing"]}
    layers = bucket_tars() + synthetic() + [
        pytar(tarfile.GNU_FORMAT, "py-gnu"),
        pytar(tarfile.PAX_FORMAT, "py-pax"),
    ]
    archives = bucket_archives()
    # Layer mode, chunks of 4096 with skipping; small layers also archive
    # mode, with 1-byte chunks and the strict policy (see tarcheck.rs).
    for name, data in layers:
        seeds["tarcheck"].append((name, b"\x0a" + data))
        seeds["tarcheck_vs_tar"].append((name, b"\x00" + data))
        seeds["extract"].append((name, data))
        if len(data) <= 2048:
            seeds["tarcheck"].append((name + "-archive-strict-bytewise", b"\x21" + data))
            seeds["tarcheck_vs_tar"].append((name + "-archive", b"\x01" + data))
    for name, data in archives:
        seeds["tarcheck"].append((name, b"\x0b" + data))
        seeds["tarcheck_vs_tar"].append((name, b"\x01" + data))

    # classify: whole blobs of the bucket (heads), and magic numbers.
    for key, data in bucket_files():
        if key.startswith(("images/many/", "images/adhoc-sibling/", "images/adhoc/2")):
            continue  # alike
        if not key.endswith((".json", "oci-layout")) and data[:1] != b"{":
            # The target reads at most 64 KiB; 2 KiB heads are enough.
            seeds["classify"].append(("bucket-" + key.replace("/", "-")[7:][:60], data[:2048]))
    small = Tar().file(b"f", b"x").end()
    for name, data in [
        ("tar-ustar", small),
        ("tar-gnu-longname", Tar().long("L", b"n" * 200).file(b"n", b"").end()),
        ("tar-pax-first", Tar().pax([(b"path", b"p")]).file(b"f", b"").end()),
        ("tar-pax-global-first", Tar().pax([(b"comment", b"c")], flag=b"g").end()),
        ("tar-v7", Tar().h(b"v7file", ord("0"), 1, magic=b"\0" * 8).data(b"v").end()),
        ("tar-empty-marker", b"\0" * 1024),
        ("tar-bad-checksum", header(b"f", ord("0"))[:148] + b"0000001\0" +
         header(b"f", ord("0"))[156:]),
        ("gzip", gzip.compress(small, mtime=0)),
        ("gzip-other-method", b"\x1f\x8b\x07\x00"),
        ("zstd-skippable", b"\x50\x2a\x4d\x18\x00\x00\x00\x00"),
        ("bzip2", b"BZh91AY&SY"),
        ("xz", b"\xfd7zXZ\x00\x00\x04"),
        ("lz4", b"\x04\x22\x4d\x18\x64\x40\xa7"),
        ("text", b"hello, world\n"),
    ]:
        seeds["classify"].append((name, data))

    # manifest: kind byte bit 0 archive, bit 1 arm64, bit 2 variant v8,
    # bit 3 registry, bits 4-6 index depth.
    for name, data in archives:
        seeds["manifest"].append((name, manifest_seed(0x41, members_of_tar(data))))
    layout = [(k[len("images/ocilayout/"):], v) for k, v in bucket_files()
              if k.startswith("images/ocilayout/")]
    seeds["manifest"] += [
        ("bucket-ocilayout", manifest_seed(0x40, layout)),
        ("bucket-adhoc", manifest_seed(0x40, [("1.tar", b""), ("2.tar", b""), ("3.tar", b"")])),
        ("oci-single", manifest_seed(0x40, oci_unit())),
        ("oci-multiarch-arm64-v8", manifest_seed(
            0x46, oci_unit((("amd64", None), ("arm64", "v8"), ("arm", "v7"))))),
        ("oci-nested-2", manifest_seed(0x41, oci_unit(nested=2))),
        ("oci-nested-too-deep", manifest_seed(0x11, oci_unit(nested=3))),
        ("docker-save", manifest_seed(0x41, docker_unit())),
        # A registry image (bit 3): `manifest` is what the reference names;
        # the rest is read by digest, manifests under manifests/.
        ("registry-index", manifest_seed(0x4e, registry_unit(
            oci_unit((("amd64", None), ("arm64", "v8"))), top="index.json"))),
        ("registry-manifest", manifest_seed(0x48, registry_unit(oci_unit(), top=None))),
        ("docker-legacy-v1", manifest_seed(0x41, [
            ("repositories", js({"x": {"latest": "a" * 64}})),
            ("a" * 64 + "/json", js({"id": "a" * 64, "architecture": "amd64"})),
            ("a" * 64 + "/layer.tar", b""), ("a" * 64 + "/VERSION", b"1.0")])),
    ]

    # rootfs_dir: bit 0 archive, bit 1 arm64, bits 2-7 members present
    # (metadata.yaml, rootfs.tar, rootfs.tar.gz, rootfs.tar.zst,
    # templates/x, metadata.yaml again).
    for name, bits, yaml in [
        ("lxc-good-tar", 0x0c, LXC_GOOD),
        ("lxc-good-gz-templates", 0x54, LXC_GOOD),
        ("lxc-zst", 0x24, b"architecture: amd64\n"),
        ("lxc-aarch64", 0x0e, b"architecture: aarch64\ncreation_date: -5 # before 1970\n"),
        ("lxc-two-rootfs", 0x1c, LXC_GOOD),
        ("lxc-quoted-crlf", 0x0c, b"---\r\n# made by hand\r\narchitecture: 'x86''64' # odd\r\n"
                                  b"\r\nproperties:\r\n    os: \"a\\\"b\\u00e9\\/\"\r\n"),
        ("lxc-nested-unknown", 0x0c, b"properties:\n  name: x\n    nested: under an unknown key\n"
                                     b"  release: jammy\narchitecture: amd64"),
        ("lxc-flow", 0x0c, b"\xef\xbb\xbfarchitecture: x86_64\nproperties:\nfoo:\n  - bar: [1, 2]\n\t\n"),
        ("lxc-archive", 0x0d, LXC_GOOD),
        ("lxc-duplicate-member", 0x8c, LXC_GOOD),
    ]:
        seeds["rootfs_dir"].append((name, bytes([bits]) + yaml))

    # names: listings of keys.
    keys = [k for k, _ in bucket_files()]
    # user: SPEC NUL PASSWD NUL GROUP
    passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken\n"
    group = b"root:x:0:\napp:x:1000:\nextra:x:2000:app,other\n"
    for spec in [b"", b"app", b"1000", b"app:extra", b"5:6", b"nobody", b"app:nogroup"]:
        seeds["user"].append(("spec-" + (spec.decode().replace(":", "-") or "empty"),
                              spec + b"\0" + passwd + b"\0" + group))
    # listing: LIST-BYTE BODY [NUL LINK]
    for name, which, body, link in [
        ("catalog", 0, {"repositories": ["library/py", "team/api", "a.b_c__d---e/f"]}, None),
        ("catalog-paged", 0, {"repositories": ["a/x"]}, '</v2/_catalog?last=a%2Fx&n=1>; rel="next"'),
        ("catalog-bad-names", 0, {"repositories": ["Team/API", "../x", "a//b", "ok"]}, None),
        ("catalog-absolute-link", 0, {"repositories": ["z"]},
         '</v2/_catalog?n=1>; rel="prev", <https://r.example.com:5000/v2/_catalog?last=z>; rel="next last"'),
        ("tags", 1, {"name": "team/api", "tags": ["v1", "latest", "_x.y-z", "-bad"]}, None),
        ("tags-null", 1, {"name": "team/api", "tags": None}, None),
        ("tags-other-repo", 1, {"name": "other", "tags": ["v1"]}, None),
    ]:
        data = bytes([which]) + js(body)
        if link is not None:
            data += b"\0" + link.encode()
        seeds["listing"].append((name, data))
    seeds["names"] += [
        ("bucket", "\n".join(keys).encode()),
        ("odd-keys", "\n".join([
            "images/", "images/folder/", "images/a.tar", "images/b.tar.gz", "images/c.tgz",
            "images/d/1.tar", "images/d/sub/2.tar", "images/../x.tar", "images/e//f.tar",
            "images/g/./h", "images/bad name/1.tar", "images/.hidden/1.tar", "other/x.tar",
            "images/" + "n" * 201 + "/x", "images/caf\u00e9/1.tar",
            "images/deep/" + "/".join("d" * 9) + "/x",
        ]).encode()),
        ("lxc", b"images/alpine/metadata.yaml\nimages/alpine/rootfs.tar.zst\n"
                b"images/alpine/templates/hostname.tpl"),
    ]

    total = 0
    for target, items in seeds.items():
        d = os.path.join(OUT, target)
        os.makedirs(d)
        names = set()
        for name, data in items:
            assert name not in names, name
            names.add(name)
            assert len(data) <= MAX_SEED, (target, name, len(data))
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
        print(f"{target:16} {len(items):3} seeds")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
