//! Data-driven tests: a tiny tar writer with raw control over every header
//! byte, a table of hostile and legitimate archives (catalogue references
//! in the case names), and the invariance of the results under chunking.

use super::*;

// ---------------------------------------------------------------------------
// A tiny tar writer.

/// One header block under construction; the checksum is set by `Tar::h`.
#[derive(Clone)]
struct H {
    b: [u8; BLOCK],
    cksum: Option<Vec<u8>>,
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

fn octal(v: u64, width: usize) -> Vec<u8> {
    let mut s = format!("{v:0w$o}", w = width - 1).into_bytes();
    s.push(0);
    s
}

impl H {
    fn new(name: &[u8], flag: u8) -> H {
        let mut b = [0u8; BLOCK];
        put(&mut b, 0, name);
        put(&mut b, 100, b"0000644\0");
        put(&mut b, 108, b"0001750\0");
        put(&mut b, 116, b"0001750\0");
        put(&mut b, 124, &octal(0, 12));
        put(&mut b, 136, &octal(1_700_000_000, 12));
        b[156] = flag;
        put(&mut b, 257, b"ustar\x0000");
        H { b, cksum: None }
    }
    fn at(mut self, off: usize, v: &[u8]) -> H {
        put(&mut self.b, off, v);
        self
    }
    fn size(self, n: u64) -> H {
        self.at(124, &octal(n, 12))
    }
    fn mode(self, m: u32) -> H {
        self.at(100, &octal(u64::from(m), 8))
    }
    fn uid(self, u: u64) -> H {
        if u < 1 << 21 {
            self.at(108, &octal(u, 8))
        } else {
            self.at(108, &b256(&u.to_be_bytes()[1..], 8))
        }
    }
    fn mtime_raw(self, v: &[u8]) -> H {
        self.at(136, v)
    }
    fn link(self, l: &[u8]) -> H {
        self.at(157, l)
    }
    fn prefix(self, p: &[u8]) -> H {
        self.at(345, p)
    }
    fn dev(self, major: u64, minor: u64) -> H {
        self.at(329, &octal(major, 8)).at(337, &octal(minor, 8))
    }
    fn gnu(self) -> H {
        self.at(257, b"ustar  \0")
    }
    fn v7(self) -> H {
        self.at(257, &[0; 8])
    }
    fn bad_cksum(mut self) -> H {
        self.cksum = Some(b"0000001\0".to_vec());
        self
    }
    fn bytes(&self) -> [u8; BLOCK] {
        let mut b = self.b;
        put(&mut b, 148, b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        let ck = self
            .cksum
            .clone()
            .unwrap_or_else(|| format!("{sum:06o}\0 ").into_bytes());
        put(&mut b, 148, &ck);
        b
    }
}

#[derive(Clone, Default)]
struct Tar(Vec<u8>);

fn pad(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(BLOCK) {
        v.push(0);
    }
}

/// PAX records "LEN key=value\n" with the right lengths.
fn records(recs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in recs {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while body + len.to_string().len() != len {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

impl Tar {
    fn new() -> Tar {
        Tar(Vec::new())
    }
    fn h(mut self, h: H) -> Tar {
        self.0.extend_from_slice(&h.bytes());
        self
    }
    fn data(mut self, d: &[u8]) -> Tar {
        self.0.extend_from_slice(d);
        pad(&mut self.0);
        self
    }
    fn raw(mut self, d: &[u8]) -> Tar {
        self.0.extend_from_slice(d);
        self
    }
    fn file(self, name: &[u8], d: &[u8]) -> Tar {
        self.h(H::new(name, b'0').size(d.len() as u64)).data(d)
    }
    fn dir(self, name: &[u8]) -> Tar {
        self.h(H::new(name, b'5').mode(0o755))
    }
    fn sym(self, name: &[u8], target: &[u8]) -> Tar {
        self.h(H::new(name, b'2').mode(0o777).link(target))
    }
    fn hard(self, name: &[u8], target: &[u8]) -> Tar {
        self.h(H::new(name, b'1').link(target))
    }
    fn ext(self, flag: u8, payload: &[u8]) -> Tar {
        self.h(H::new(b"././@PaxHeader", flag).size(payload.len() as u64))
            .data(payload)
    }
    fn pax(self, recs: &[(&[u8], &[u8])]) -> Tar {
        self.ext(b'x', &records(recs))
    }
    fn long(self, flag: u8, name: &[u8]) -> Tar {
        let mut p = name.to_vec();
        p.push(0);
        self.h(H::new(b"././@LongLink", flag).gnu().size(p.len() as u64))
            .data(&p)
    }
    fn end(self) -> Tar {
        self.raw(&[0; 2 * BLOCK])
    }
}

// ---------------------------------------------------------------------------
// Running the checker.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done(Vec<Entry>, Vec<Decision>),
    Rejected(Rejection),
}

/// Feeds `input` in `chunk`-byte slices (0: whole), skipping to `want`
/// when `honour`, then finishes.
fn run(input: &[u8], mode: Mode, policy: &Policy, chunk: usize, honour: bool) -> Outcome {
    let mut c = Checker::new(mode, policy.clone());
    let (mut entries, mut decisions) = (Vec::new(), Vec::new());
    let len = input.len() as u64;
    let mut pos = 0u64;
    while pos < len {
        let end = if chunk == 0 {
            len
        } else {
            (pos + chunk as u64).min(len)
        };
        match c.feed(pos, &input[pos as usize..end as usize]) {
            Ok(p) => {
                assert!(p.want >= end, "want {} before {end}", p.want);
                check_progress(&p, end);
                entries.extend(p.entries);
                decisions.extend(p.decisions);
                pos = if honour { p.want } else { end };
            }
            Err(r) => {
                check_one_line(&r.path);
                check_one_line(&r.reason);
                // Rejections are final.
                assert_eq!(c.feed(p_want(&c), &[]), Err(r.clone()));
                assert_eq!(c.finish(len), Err(r.clone()));
                return Outcome::Rejected(r);
            }
        }
    }
    match c.finish(len) {
        Ok(p) => {
            assert!(p.entries.is_empty() && p.decisions.is_empty());
            Outcome::Done(entries, decisions)
        }
        Err(r) => {
            check_one_line(&r.reason);
            Outcome::Rejected(r)
        }
    }
}

fn p_want(c: &Checker) -> u64 {
    c.want()
}

fn check_one_line(s: &str) {
    assert!(!s.chars().any(char::is_control), "{s:?}");
    assert!(s.chars().count() <= guest_text::MAX_LINE_CHARS + 3, "{s:?}");
}

fn check_progress(p: &Progress, fed_end: u64) {
    for e in &p.entries {
        if e.kind == EntryKind::Regular {
            assert!(e.data_offset.is_multiple_of(BLOCK as u64));
            assert!(e.data_offset <= fed_end);
        } else {
            assert_eq!((e.data_offset, e.data_size), (0, 0));
        }
        assert!(!e.path.starts_with(b"/") && !e.path.ends_with(b"/"));
    }
    for d in &p.decisions {
        check_one_line(&d.path);
        check_one_line(&d.detail);
    }
}

/// The expected shape of one entry: kind and path, plus the fields set.
#[derive(Clone, Default)]
struct X {
    kind: Option<EntryKind>,
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    mode: Option<u32>,
    uid: Option<u32>,
    mtime: Option<(i64, u32)>,
    data: Option<(u64, u64)>,
    dev: Option<(u32, u32)>,
    xattrs: Option<Vec<(String, Vec<u8>)>>,
}

fn x(kind: EntryKind, path: &str) -> X {
    X {
        kind: Some(kind),
        path: path.as_bytes().to_vec(),
        ..X::default()
    }
}

impl X {
    fn link(mut self, l: &str) -> X {
        self.link = Some(l.as_bytes().to_vec());
        self
    }
    fn mode(mut self, m: u32) -> X {
        self.mode = Some(m);
        self
    }
    fn uid(mut self, u: u32) -> X {
        self.uid = Some(u);
        self
    }
    fn mtime(mut self, s: i64, ns: u32) -> X {
        self.mtime = Some((s, ns));
        self
    }
    fn data(mut self, off: u64, size: u64) -> X {
        self.data = Some((off, size));
        self
    }
    fn dev(mut self, a: u32, b: u32) -> X {
        self.dev = Some((a, b));
        self
    }
    fn xattrs(mut self, xs: &[(&str, &[u8])]) -> X {
        self.xattrs = Some(
            xs.iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
        );
        self
    }
    fn matches(&self, e: &Entry) -> bool {
        Some(e.kind) == self.kind
            && e.path == self.path
            && self
                .link
                .as_ref()
                .is_none_or(|l| e.link.as_ref() == Some(l))
            && self.mode.is_none_or(|m| e.mode == m)
            && self.uid.is_none_or(|u| e.uid == u)
            && self.mtime.is_none_or(|t| (e.mtime_sec, e.mtime_nsec) == t)
            && self.data.is_none_or(|d| (e.data_offset, e.data_size) == d)
            && self.dev.is_none_or(|d| (e.dev_major, e.dev_minor) == d)
            && self.xattrs.as_ref().is_none_or(|xs| {
                e.xattrs
                    .iter()
                    .map(|x| (x.name.clone(), x.value.clone()))
                    .collect::<Vec<_>>()
                    == *xs
            })
    }
}

enum Want {
    Ok(Vec<X>, Vec<(&'static str, Action)>),
    Rej(&'static str, &'static str),
}

fn ok(xs: Vec<X>) -> Want {
    Want::Ok(xs, vec![])
}

fn okd(xs: Vec<X>, ds: Vec<(&'static str, Action)>) -> Want {
    Want::Ok(xs, ds)
}

fn no(rule: &'static str, sub: &'static str) -> Want {
    Want::Rej(rule, sub)
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    mode: Mode,
    policy: Policy,
    want: Want,
}

fn layer(name: &'static str, t: Tar, want: Want) -> Case {
    Case {
        name,
        input: t.0,
        mode: Mode::Layer,
        policy: Policy::default(),
        want,
    }
}

fn with(policy: Policy, mut c: Case) -> Case {
    c.policy = policy;
    c
}

fn archive(mut c: Case) -> Case {
    c.mode = Mode::Archive;
    c
}

fn pol(f: impl FnOnce(&mut Policy)) -> Policy {
    let mut p = Policy::default();
    f(&mut p);
    p
}

/// Checks one case against its expectation, and that every chunking gives
/// the same outcome.
fn check(c: &Case) {
    let got = run(&c.input, c.mode, &c.policy, 0, true);
    match (&got, &c.want) {
        (Outcome::Done(es, ds), Want::Ok(xs, wds)) => {
            assert_eq!(es.len(), xs.len(), "{}: entries {es:#?}", c.name);
            for (e, x) in es.iter().zip(xs) {
                assert!(x.matches(e), "{}: unexpected entry {e:#?}", c.name);
            }
            let got_ds: Vec<(&str, Action)> =
                ds.iter().map(|d| (d.rule.as_str(), d.action)).collect();
            assert_eq!(got_ds, *wds, "{}: decisions {ds:#?}", c.name);
        }
        (Outcome::Rejected(r), Want::Rej(rule, sub)) => {
            assert_eq!(r.rule, *rule, "{}: {r:?}", c.name);
            assert!(r.reason.contains(sub), "{}: {r:?} lacks {sub:?}", c.name);
        }
        (got, _) => panic!("{}: unexpected outcome {got:#?}", c.name),
    }
    for chunk in [1, 7, 512, 0] {
        for honour in [true, false] {
            let other = run(&c.input, c.mode, &c.policy, chunk, honour);
            assert_eq!(other, got, "{}: chunk {chunk}, honour {honour}", c.name);
        }
    }
}

// ---------------------------------------------------------------------------
// The table.

use EntryKind::{
    BlockDevice, CharDevice, Directory as Dir, Fifo, Hardlink, Opaque, Regular as Reg,
    Symlink as Sym, Whiteout,
};

fn cap_v2() -> Vec<u8> {
    let mut v = vec![0u8; 20];
    v[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    v[4] = 0x20;
    v
}

fn cap_v3(rootid: u8) -> Vec<u8> {
    let mut v = vec![0u8; 24];
    v[..4].copy_from_slice(&0x0300_0001u32.to_le_bytes());
    v[4] = 0x20;
    v[20] = rootid;
    v
}

fn b256(v: &[u8], width: usize) -> Vec<u8> {
    let mut out = vec![0u8; width];
    out[0] = 0x80;
    out[width - v.len()..].copy_from_slice(v);
    out
}

fn cases() -> Vec<Case> {
    use rule::*;
    let t = Tar::new;
    let long_name = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    let long_name: &'static str = Box::leak(long_name.into_boxed_str());
    let mut v = vec![
        // Legitimate content.
        layer("empty 0-byte stream", t(), ok(vec![])),
        layer("only zero blocks", t().end(), ok(vec![])),
        layer("one zero block then EOF", t().raw(&[0; 512]), ok(vec![])),
        layer(
            "zero blocks beyond the marker",
            t().end().raw(&[0; 10240 - 1024]),
            ok(vec![]),
        ),
        layer(
            "plain file, dir, EOF without marker",
            t().dir(b"etc/").file(b"etc/hosts", b"127.0.0.1\n"),
            ok(vec![
                x(Dir, "etc").mode(0o755).uid(1000).mtime(1_700_000_000, 0),
                x(Reg, "etc/hosts").mode(0o644).data(1024, 10),
            ]),
        ),
        layer(
            "A6 look-alikes",
            t().file(b"..gitme", b"x").file(b".bashrc", b"").end(),
            ok(vec![
                x(Reg, "..gitme").data(512, 1),
                x(Reg, ".bashrc").data(1536, 0),
            ]),
        ),
        layer(
            "absolute symlink kept",
            t().sym(b"localetc", b"/etc").end(),
            ok(vec![x(Sym, "localetc").link("/etc").mode(0o777)]),
        ),
        layer(
            "hardlink to an earlier file and to a symlink",
            t().file(b"a", b"1")
                .sym(b"s", b"a")
                .hard(b"h1", b"a")
                .hard(b"h2", b"./s")
                .end(),
            ok(vec![
                x(Reg, "a"),
                x(Sym, "s").link("a"),
                x(Hardlink, "h1").link("a"),
                x(Hardlink, "h2").link("s"),
            ]),
        ),
        layer(
            "hardlink to a lower layer's file (not seen)",
            t().hard(b"h", b"usr/bin/x").end(),
            ok(vec![x(Hardlink, "h").link("usr/bin/x")]),
        ),
        layer(
            "C18 absolute hardlink target confined",
            t().file(b"usr/bin/perlbug", b"x")
                .hard(b"usr/bin/perlthanks", b"/usr/bin/perlbug"),
            okd(
                vec![
                    x(Reg, "usr/bin/perlbug"),
                    x(Hardlink, "usr/bin/perlthanks").link("usr/bin/perlbug"),
                ],
                vec![(HARDLINKS, Action::Note)],
            ),
        ),
        layer(
            "D31 whiteout and opaque, opaque first",
            t().dir(b"a/")
                .file(b"a/.wh..wh..opq", b"")
                .file(b"a/b", b"x")
                .file(b"c/.wh.d", b""),
            ok(vec![
                x(Dir, "a"),
                x(Opaque, "a"),
                x(Reg, "a/b"),
                x(Whiteout, "c/d"),
            ]),
        ),
        layer(
            "D31 whiteout and opaque, opaque last",
            t().file(b"c/.wh.d", b"")
                .dir(b"a/")
                .file(b"a/b", b"x")
                .file(b"a/.wh..wh..opq", b""),
            ok(vec![
                x(Whiteout, "c/d"),
                x(Dir, "a"),
                x(Reg, "a/b"),
                x(Opaque, "a"),
            ]),
        ),
        layer(
            "D31 root opaque noted",
            t().file(b".wh..wh..opq", b"").end(),
            okd(vec![x(Opaque, "")], vec![(WHITEOUTS, Action::Note)]),
        ),
        layer(
            "D32 whiteout then entry of the same name",
            t().file(b".wh.x", b"").file(b"x", b"new"),
            ok(vec![x(Whiteout, "x"), x(Reg, "x")]),
        ),
        layer(
            "PAX long names and link",
            t().pax(&[
                (b"path", long_name.as_bytes()),
                (b"mtime", b"1700000000.25"),
            ])
            .file(b"short", b"abc")
            .pax(&[(b"linkpath", long_name.as_bytes())])
            .sym(b"lnk", b"ignored"),
            ok(vec![
                x(Reg, long_name)
                    .data(3 * 512, 3)
                    .mtime(1_700_000_000, 250_000_000),
                x(Sym, "lnk").link(long_name),
            ]),
        ),
        layer(
            "GNU long name and long link",
            t().long(b'L', long_name.as_bytes())
                .h(H::new(b"trunc", b'0').gnu().size(2))
                .data(b"hi")
                .long(b'K', long_name.as_bytes())
                .long(b'L', b"hl")
                .h(H::new(b"x", b'1').gnu()),
            ok(vec![
                x(Reg, long_name).data(3 * 512, 2),
                x(Hardlink, "hl").link(long_name),
            ]),
        ),
        layer(
            "ustar prefix field",
            t().h(H::new(b"name", b'0').prefix(b"some/prefix").size(1))
                .data(b"z"),
            ok(vec![x(Reg, "some/prefix/name").data(512, 1)]),
        ),
        layer(
            "GNU magic ignores the prefix field",
            t().h(H::new(b"name", b'0').gnu().prefix(b"garbage")),
            ok(vec![x(Reg, "name")]),
        ),
        layer(
            "pre-POSIX directory and file",
            t().h(H::new(b"olddir/", 0).v7())
                .h(H::new(b"olddir/f", 0).v7()),
            ok(vec![x(Dir, "olddir"), x(Reg, "olddir/f")]),
        ),
        layer(
            "typeflag 7 is a regular file",
            t().h(H::new(b"c", b'7').size(1)).data(b"c"),
            ok(vec![x(Reg, "c").data(512, 1)]),
        ),
        layer(
            "signed checksum accepted",
            {
                let h = H::new(b"\xe9t\xe9", b'0');
                let mut b = h.b;
                put(&mut b, 148, b"        ");
                let sum: i64 = b.iter().map(|&x| i64::from(x as i8)).sum();
                put(&mut b, 148, format!("{sum:06o}\0 ").as_bytes());
                t().raw(&b)
            },
            ok(vec![X {
                kind: Some(Reg),
                path: b"\xe9t\xe9".to_vec(),
                mode: Some(0o644),
                ..X::default()
            }]),
        ),
        layer(
            "base-256 size and spaces in octal",
            t().h(H::new(b"f", b'0')
                .at(124, &b256(&[3], 12))
                .at(100, b"  644 \0\0"))
                .data(b"abc"),
            ok(vec![x(Reg, "f").data(512, 3).mode(0o644)]),
        ),
        layer(
            "A7 systemd escape is a literal backslash",
            t().file(
                b"lib/systemd/system/system-systemd\\x2dcryptsetup.slice",
                b"",
            ),
            ok(vec![x(
                Reg,
                "lib/systemd/system/system-systemd\\x2dcryptsetup.slice",
            )]),
        ),
        layer(
            "PAX size wins over a zero header size",
            t().pax(&[(b"size", b"5")])
                .file(b"f", b"")
                .raw(b"hello")
                .raw(&[0; 507])
                .end(),
            ok(vec![x(Reg, "f").data(3 * 512, 5)]),
        ),
        layer(
            "PAX size equal to the header size",
            t().pax(&[(b"size", b"2")]).file(b"f", b"ab"),
            ok(vec![x(Reg, "f").data(3 * 512, 2)]),
        ),
        layer(
            "PAX unknown keys ignored, uid/gid",
            t().pax(&[
                (b"comment", b"hi"),
                (b"uid", b"4294967294"),
                (b"gid", b"7"),
                (b"atime", b"1.5"),
            ])
            .file(b"f", b""),
            ok(vec![x(Reg, "f").uid(4_294_967_294)]),
        ),
        // A. Paths.
        layer(
            "A1 ../victim/dotdot",
            t().file(b"../victim/dotdot", b"x"),
            no(PATHS, "`..`"),
        ),
        layer(
            "A1 some/../../x",
            t().file(b"some/../../x", b"x"),
            no(PATHS, "`..`"),
        ),
        layer("A1 ./../x", t().file(b"./../x", b"x"), no(PATHS, "`..`")),
        layer("A2 ..", t().dir(b".."), no(PATHS, "`..`")),
        layer("A2 ../pwned", t().file(b"../pwned", b""), no(PATHS, "`..`")),
        layer("A2 /////////..", t().dir(b"/////////.."), no(PATHS, "`..`")),
        layer("A2 ././//./..", t().dir(b"././//./.."), no(PATHS, "`..`")),
        layer(
            "A3 absolute paths confined",
            t().file(b"/tmp/abs_evil.txt", b"")
                .file(b"//tmp/x", b"")
                .file(b"///./tmp/y", b""),
            okd(
                vec![x(Reg, "tmp/abs_evil.txt"), x(Reg, "tmp/x"), x(Reg, "tmp/y")],
                vec![
                    (PATHS, Action::Note),
                    (PATHS, Action::Note),
                    (PATHS, Action::Note),
                ],
            ),
        ),
        layer(
            "A3 /../victim/x",
            t().file(b"/../victim/x", b""),
            no(PATHS, "`..`"),
        ),
        layer(
            "A4 root-equivalent directories skipped",
            t().dir(b".")
                .dir(b"/")
                .dir(b"")
                .dir(b"/////////")
                .dir(b"./"),
            okd(vec![], vec![(PATHS, Action::Skip); 5]),
        ),
        layer(
            "A5 root symlink",
            t().sym(b"/.", b"/tmp"),
            no(PATHS, "root is not a directory"),
        ),
        layer("A5 root file", t().file(b"./", b""), no(PATHS, "ends with")),
        layer(
            "A5 root hardlink",
            t().hard(b".", b"x"),
            no(PATHS, "root is not a directory"),
        ),
        layer(
            "A7 \\tmp\\evil",
            t().file(b"\\tmp\\evil", b""),
            no(PATHS, "backslash"),
        ),
        layer(
            "A7 C:/tmp/evil",
            t().file(b"C:/tmp/evil", b""),
            no(PATHS, "drive"),
        ),
        layer(
            "A7 C:..\\evil",
            t().file(b"C:..\\evil", b""),
            no(PATHS, "drive"),
        ),
        layer(
            "A7 ..\\..\\tmp\\evil",
            t().file(b"..\\..\\tmp\\evil", b""),
            no(PATHS, "backslash"),
        ),
        // B. Symlink names.
        layer(
            "B12 symlink named ..",
            t().sym(b"..", b"/etc"),
            no(PATHS, "`..`"),
        ),
        layer(
            "B12 symlink with an empty name",
            t().sym(b"", b"/etc"),
            no(PATHS, "root"),
        ),
        layer(
            "B12 localetc/sub/..",
            t().sym(b"localetc/sub/..", b"/etc/"),
            no(PATHS, "`..`"),
        ),
        layer(
            "symlink with an empty target",
            t().sym(b"s", b""),
            no(MALFORMED, "empty target"),
        ),
        layer(
            "symlink target too long",
            t().pax(&[(b"linkpath", &[b'a'; 4097])]).sym(b"s", b"x"),
            no(MAX_PATH, "target"),
        ),
        with(
            pol(|p| p.absolute_symlinks = Verdict::Reject),
            layer(
                "absolute symlink rejected by policy",
                t().sym(b"s", b"/etc"),
                no(ABS_SYMLINKS, "absolute"),
            ),
        ),
        // C. Hardlinks.
        layer(
            "C17 ../victim/hello",
            t().hard(b"dotdot", b"../victim/hello"),
            no(HARDLINKS, "`..`"),
        ),
        layer(
            "C17 /../victim/hello",
            t().hard(b"dotdot", b"/../victim/hello"),
            no(HARDLINKS, "`..`"),
        ),
        layer(
            "C22 loophole-victim",
            t().hard(b"loophole-victim", b"../victim"),
            no(HARDLINKS, "`..`"),
        ),
        layer(
            "C24 sibling prefix",
            t().hard(b"grab", b"../dest-evil/secret"),
            no(HARDLINKS, "`..`"),
        ),
        layer(
            "C hardlink with backslashes",
            t().hard(b"h", b"..\\x"),
            no(HARDLINKS, "backslash"),
        ),
        layer(
            "C hardlink to itself",
            t().hard(b"h", b"./h"),
            no(HARDLINKS, "itself"),
        ),
        layer(
            "C hardlink to the root",
            t().hard(b"h", b"/"),
            no(HARDLINKS, "root"),
        ),
        layer(
            "C hardlink with empty target",
            t().hard(b"h", b""),
            no(MALFORMED, "empty target"),
        ),
        layer(
            "C hardlink to a directory",
            t().dir(b"d/").hard(b"h", b"d"),
            no(HARDLINKS, "directory"),
        ),
        layer(
            "C hardlink to an implied directory",
            t().file(b"d/f", b"").hard(b"h", b"d"),
            no(HARDLINKS, "directory"),
        ),
        layer(
            "C hardlink to a whiteout name",
            t().hard(b"h", b".wh..wh.plnk/123"),
            no(WHITEOUTS, "whiteout"),
        ),
        // D. Whiteouts.
        layer(
            "D26 .wh.",
            t().file(b".wh.", b""),
            no(WHITEOUTS, "invalid whiteout"),
        ),
        layer(
            "D26 .wh..",
            t().file(b".wh..", b""),
            no(WHITEOUTS, "invalid whiteout"),
        ),
        layer(
            "D26 .wh...",
            t().file(b".wh...", b""),
            no(WHITEOUTS, "invalid whiteout"),
        ),
        layer(
            "D26 etc/.wh..",
            t().file(b"etc/.wh..", b""),
            no(WHITEOUTS, "invalid whiteout"),
        ),
        layer(
            "D29 .wh.etc/somefile",
            t().file(b".wh.etc/somefile", b""),
            no(WHITEOUTS, "directory name"),
        ),
        layer(
            "D30 entry then its whiteout",
            t().file(b"x", b"").file(b".wh.x", b""),
            no(WHITEOUTS, "same layer"),
        ),
        layer(
            "D30 whiteout of a directory written below",
            t().file(b"a/b", b"").file(b".wh.a", b""),
            no(WHITEOUTS, "same layer"),
        ),
        layer(
            "D33 whiteout symlink",
            t().sym(b".wh.x", b"y"),
            no(WHITEOUTS, "empty regular"),
        ),
        layer(
            "D33 whiteout hardlink",
            t().hard(b".wh.x", b"y"),
            no(WHITEOUTS, "empty regular"),
        ),
        layer(
            "D33 whiteout dir",
            t().dir(b".wh.x/"),
            no(WHITEOUTS, "empty regular"),
        ),
        layer(
            "D33 whiteout with data",
            t().file(b".wh.x", b"data"),
            no(WHITEOUTS, "empty regular"),
        ),
        layer(
            "D33 whiteout with xattr",
            t().pax(&[(b"SCHILY.xattr.user.a", b"b")])
                .file(b".wh.x", b""),
            no(WHITEOUTS, "empty regular"),
        ),
        layer(
            "D33 opaque with data",
            t().file(b"a/.wh..wh..opq", b"x"),
            no(WHITEOUTS, "empty regular"),
        ),
        layer(
            "D34 AUFS link dir",
            t().file(b".wh..wh.plnk/123", b""),
            no(WHITEOUTS, "directory name"),
        ),
        layer(
            "D34 AUFS meta file",
            t().file(b".wh..wh.aufs", b""),
            no(WHITEOUTS, "AUFS"),
        ),
        // E. Resources and format.
        layer(
            "E36 huge PAX header refused before buffering",
            t().h(H::new(b"p", b'x').size(2 << 20)),
            no(MAX_EXT, "over the 1048576-byte limit"),
        ),
        layer(
            "E36 huge GNU long name refused before buffering",
            t().h(H::new(b"p", b'L').gnu().size(1 << 30)),
            no(MAX_EXT, "GNU long name"),
        ),
        with(
            pol(|p| p.max_ext_header_bytes = 100),
            layer(
                "E36 policy cap",
                t().pax(&[(b"path", &[b'a'; 100])]).file(b"f", b""),
                no(MAX_EXT, "100-byte"),
            ),
        ),
        layer(
            "E37 PAX size smuggling",
            t().pax(&[(b"size", b"2048")])
                .file(b"f", b"12345678")
                .sym(b"smuggled", b"/etc/shadow"),
            no(MALFORMED, "PAX size disagrees"),
        ),
        // Entries that carry no data with a nonzero size: readers disagree
        // on whether data follows (tar-rs and GNU tar skip it, Go does not).
        layer(
            "E37 symlink with a nonzero size hides a header",
            t().h(H::new(b"l", b'2').mode(0o777).link(b"t").size(512))
                .raw(&H::new(b"smuggled", b'0').bytes())
                .file(b"f", b"x"),
            no(MALFORMED, "symlink with a nonzero size 512"),
        ),
        layer(
            "E37 hardlink with a nonzero size",
            t().file(b"a", b"x")
                .h(H::new(b"h", b'1').link(b"a").size(1))
                .data(b"y"),
            no(MALFORMED, "hardlink with a nonzero size 1"),
        ),
        layer(
            "E37 directory with a nonzero size",
            t().h(H::new(b"d", b'5').size(600))
                .data(&[7; 600])
                .file(b"f", b"1"),
            no(MALFORMED, "directory with a nonzero size 600"),
        ),
        layer(
            "E37 pre-POSIX directory with a nonzero size",
            t().h(H::new(b"d/", b'\0').v7().size(3)).data(b"abc"),
            no(MALFORMED, "directory with a nonzero size 3"),
        ),
        with(
            pol(|p| p.device_nodes = Verdict::Allow),
            layer(
                "E37 character device with a nonzero size",
                t().h(H::new(b"c", b'3').dev(1, 3).size(1)).data(b"z"),
                no(MALFORMED, "character device with a nonzero size 1"),
            ),
        ),
        layer(
            "E37 skipped block device with a nonzero size",
            t().h(H::new(b"b", b'4').dev(8, 0).size(1)).data(b"z"),
            no(MALFORMED, "block device with a nonzero size 1"),
        ),
        layer(
            "E37 FIFO with a nonzero size",
            t().h(H::new(b"p", b'6').size(1)).data(b"z"),
            no(MALFORMED, "FIFO with a nonzero size 1"),
        ),
        archive(layer(
            "E37 archive: device with a nonzero size",
            t().h(H::new(b"c", b'3').dev(1, 3).size(1)).data(b"z"),
            no(MALFORMED, "character device with a nonzero size 1"),
        )),
        layer(
            "E37 PAX size on a symlink",
            t().pax(&[(b"size", b"512")])
                .sym(b"l", b"t")
                .raw(&H::new(b"smuggled", b'0').bytes()),
            no(MALFORMED, "symlink with a nonzero size 512"),
        ),
        layer(
            "E37 zero PAX size on a symlink",
            t().pax(&[(b"size", b"0")]).sym(b"l", b"t"),
            ok(vec![x(Sym, "l").link("t")]),
        ),
        // Headers that readers going by the magic and version (tar-rs)
        // read differently.
        layer(
            "E37 GNU long link with a v7 magic",
            t().h(H::new(b"././@LongLink", b'K').v7().size(2))
                .data(b"t\0")
                .sym(b"l", b"x"),
            no(MALFORMED, "GNU long link without a ustar or GNU magic"),
        ),
        layer(
            "E37 PAX header with a version other than 00",
            t().h(H::new(b"p", b'x')
                .at(263, b"\0\0")
                .size(records(&[(b"path", b"a")]).len() as u64))
                .data(&records(&[(b"path", b"a")]))
                .file(b"f", b""),
            no(
                MALFORMED,
                "PAX extended header without a ustar or GNU magic",
            ),
        ),
        layer(
            "E37 ustar prefix with a version other than 00",
            t().h(H::new(b"name", b'0').prefix(b"some/prefix").at(263, b"  ")),
            no(MALFORMED, "prefix field with a version other than 00"),
        ),
        layer(
            "ustar version other than 00 without a prefix",
            t().h(H::new(b"name", b'0').at(263, b"\0\0")),
            ok(vec![x(Reg, "name")]),
        ),
        layer(
            "E37 PAX newline starts a record to some readers",
            t().pax(&[(b"comment", b"x\n13 path=evil")]).file(b"f", b""),
            no(MALFORMED, "newline that starts another record"),
        ),
        layer(
            "E37 malformed PAX record",
            t().ext(b'x', b"10 path=x\r").file(b"f", b""),
            no(MALFORMED, "PAX record"),
        ),
        layer(
            "E37 PAX record past its header",
            t().ext(b'x', b"99 path=x\n").file(b"f", b""),
            no(MALFORMED, "runs past"),
        ),
        layer(
            "E37 duplicate PAX record",
            t().pax(&[(b"path", b"a"), (b"path", b"b")]).file(b"f", b""),
            no(MALFORMED, "duplicate PAX record"),
        ),
        layer(
            "E37 two PAX headers",
            t().pax(&[(b"path", b"a")])
                .pax(&[(b"path", b"b")])
                .file(b"f", b""),
            no(MALFORMED, "duplicate extension"),
        ),
        layer(
            "E37 PAX path with NUL",
            t().pax(&[(b"path", b"a\0b")]).file(b"f", b""),
            no(MALFORMED, "NUL"),
        ),
        layer(
            "E37 empty PAX path",
            t().pax(&[(b"path", b"")]).file(b"f", b""),
            no(MALFORMED, "empty PAX"),
        ),
        layer(
            "E37 PAX size then GNU long name",
            t().pax(&[(b"size", b"0")]).long(b'L', b"n").file(b"f", b""),
            no(MALFORMED, "PAX size record followed"),
        ),
        layer(
            "E37 PAX path and GNU long name",
            t().pax(&[(b"path", b"a")]).long(b'L', b"b").file(b"f", b""),
            no(MALFORMED, "both"),
        ),
        layer(
            "E37 PAX then EOF",
            t().pax(&[(b"path", b"a")]),
            no(MALFORMED, "followed by the end"),
        ),
        layer(
            "E37 PAX then end marker",
            t().pax(&[(b"path", b"a")]).end(),
            no(MALFORMED, "followed by the end"),
        ),
        layer(
            "E37 global header between PAX and entry",
            t().pax(&[(b"path", b"a")]).pax_global().file(b"f", b""),
            no(MALFORMED, "global"),
        ),
        layer(
            "E37 invalid PAX mtime",
            t().pax(&[(b"mtime", b"soon")]).file(b"f", b""),
            no(MALFORMED, "mtime"),
        ),
        layer(
            "E37 invalid PAX uid",
            t().pax(&[(b"uid", b"-1")]).file(b"f", b""),
            no(MALFORMED, "uid"),
        ),
        layer(
            "E38 size overflow",
            t().h(H::new(b"f", b'0').at(
                124,
                &[
                    0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ],
            )),
            no(MALFORMED, "overflows"),
        ),
        layer(
            "E38 size beyond u64",
            t().h(H::new(b"f", b'0').at(124, &[0x81; 12])),
            no(MALFORMED, "overflows"),
        ),
        layer(
            "E38 negative size",
            t().h(H::new(b"f", b'0').at(124, &[0xff; 12])),
            no(MALFORMED, "negative"),
        ),
        layer(
            "E38 size past EOF",
            t().h(H::new(b"f", b'0').size(1000)).raw(b"short"),
            no(MALFORMED, "truncated inside `f`"),
        ),
        layer(
            "E38 EOF inside padding",
            t().h(H::new(b"f", b'0').size(5)).raw(b"abcde"),
            no(MALFORMED, "truncated inside `f`"),
        ),
        layer(
            "E38 EOF inside a header",
            t().file(b"f", b"").raw(&[1; 100]),
            no(MALFORMED, "inside a header"),
        ),
        layer(
            "E38 EOF inside an extension",
            t().h(H::new(b"p", b'x').size(100)).raw(b"30 "),
            no(MALFORMED, "inside an extension"),
        ),
        layer(
            "E39 GNU sparse type",
            t().h(H::new(b"s", b'S').gnu()),
            no(SPARSE, "sparse"),
        ),
        layer(
            "E39 PAX GNU.sparse.name",
            t().pax(&[(b"GNU.sparse.name", b"x"), (b"GNU.sparse.realsize", b"99")])
                .file(b"s", b""),
            no(SPARSE, "sparse"),
        ),
        layer(
            "E42 junk after the marker",
            t().file(b"f", b"").end().raw(b"junk"),
            no(TRAILER, "non-zero data after the end"),
        ),
        layer(
            "E42 entry after the marker",
            t().end().file(b"hidden", b""),
            no(TRAILER, "non-zero"),
        ),
        layer(
            "E42 entry after one zero block",
            t().raw(&[0; 512]).file(b"hidden", b""),
            no(TRAILER, "non-zero"),
        ),
        layer(
            "E44 too deep",
            t().pax(&[(b"path", &[b"a/".repeat(256).as_slice(), b"f"].concat())])
                .file(b"f", b""),
            no(MAX_DEPTH, "256 levels"),
        ),
        layer(
            "E44 component too long",
            t().pax(&[(b"path", &[b'n'; 256])]).file(b"f", b""),
            no(MAX_NAME, "255 bytes"),
        ),
        layer(
            "E44 path too long",
            t().pax(&[(b"path", &b"ab/".repeat(1400))]).file(b"f", b""),
            no(MAX_PATH, "4096"),
        ),
        layer(
            "E44 4095 bytes ok",
            t().pax(&[(b"path", &long16())]).file(b"f", b""),
            ok(vec![X {
                kind: Some(Reg),
                path: long16(),
                ..X::default()
            }]),
        ),
        layer(
            "E45 duplicates: later wins, noted",
            t().file(b"f", b"1").file(b"./f", b"22"),
            okd(
                vec![x(Reg, "f").data(512, 1), x(Reg, "f").data(1536, 2)],
                vec![(DUPLICATES, Action::Note)],
            ),
        ),
        with(
            pol(|p| p.duplicates = Verdict::Reject),
            layer(
                "E45 duplicates rejected by policy",
                t().dir(b"d").dir(b"d/"),
                no(DUPLICATES, "twice"),
            ),
        ),
        with(
            pol(|p| p.max_entries = 2),
            layer(
                "E43 too many entries",
                t().dir(b"a").dir(b"b").dir(b"c"),
                no(MAX_ENTRIES, "more than 2 entries"),
            ),
        ),
        with(
            pol(|p| p.max_bytes = 10),
            layer(
                "E40 too many bytes",
                t().file(b"a", b"123456").file(b"b", b"123456"),
                no(MAX_BYTES, "more than 10 bytes"),
            ),
        ),
        layer(
            "bad checksum",
            t().file(b"ok", b"").h(H::new(b"f", b'0').bad_cksum()),
            no(MALFORMED, "bad header checksum at offset 512 (after `ok`)"),
        ),
        layer(
            "empty checksum",
            t().h(H::new(b"f", b'0').at(0, b"f")).raw(&{
                let mut b = H::new(b"g", b'0').bytes();
                put(&mut b, 148, &[0; 8]);
                b
            }),
            no(MALFORMED, "checksum"),
        ),
        layer(
            "invalid octal",
            t().h(H::new(b"f", b'0').at(108, b"00017x0\0")),
            no(MALFORMED, "invalid uid"),
        ),
        layer(
            "regular name ending in /",
            t().file(b"f/", b""),
            no(PATHS, "ends with"),
        ),
        layer(
            "G69 unknown type Z",
            t().h(H::new(b"z", b'Z')),
            no(ENTRY_TYPES, "'Z'"),
        ),
        layer(
            "G69 GNU volume header",
            t().h(H::new(b"v", b'V').gnu()),
            no(ENTRY_TYPES, "'V'"),
        ),
        layer(
            "G69 binary type",
            t().h(H::new(b"b", 0x01)),
            no(ENTRY_TYPES, "0x01"),
        ),
        layer(
            "G69 PAX global header noted",
            t().pax_global().file(b"f", b""),
            okd(vec![x(Reg, "f")], vec![(PAX_GLOBAL, Action::Note)]),
        ),
        layer(
            "G69 malformed PAX global header",
            t().ext(b'g', b"6 a=b\n\0").file(b"f", b""),
            no(MALFORMED, "PAX record"),
        ),
        // G. Special files and metadata.
        layer(
            "G67 device skipped by default",
            t().h(H::new(b"dev/null", b'3').dev(1, 3))
                .h(H::new(b"dev/sda", b'4').dev(8, 0)),
            okd(
                vec![],
                vec![(DEVICES, Action::Skip), (DEVICES, Action::Skip)],
            ),
        ),
        with(
            pol(|p| p.device_nodes = Verdict::Allow),
            layer(
                "G67 devices allowed",
                t().h(H::new(b"dev/null", b'3').dev(1, 3))
                    .h(H::new(b"dev/sda", b'4').dev(8, 0)),
                ok(vec![
                    x(CharDevice, "dev/null").dev(1, 3),
                    x(BlockDevice, "dev/sda").dev(8, 0),
                ]),
            ),
        ),
        with(
            pol(|p| p.device_nodes = Verdict::Reject),
            layer(
                "G67 devices rejected",
                t().h(H::new(b"dev/null", b'3').dev(1, 3)),
                no(DEVICES, "not allowed"),
            ),
        ),
        layer(
            "G67 negative device number",
            t().h(H::new(b"d", b'3').at(329, &[0xff; 8])),
            no(DEVICES, "out of range"),
        ),
        layer(
            "G67 device number beyond u32",
            t().h(H::new(b"d", b'4').at(337, &b256(&[1, 0, 0, 0, 0], 8))),
            no(DEVICES, "out of range"),
        ),
        layer(
            "G68 fifo allowed",
            t().h(H::new(b"run/f", b'6')),
            ok(vec![x(Fifo, "run/f")]),
        ),
        with(
            pol(|p| p.fifos = Verdict::Skip),
            layer(
                "G68 fifo skipped",
                t().h(H::new(b"run/f", b'6')),
                okd(vec![], vec![(FIFOS, Action::Skip)]),
            ),
        ),
        layer(
            "G70 setuid kept and noted",
            t().h(H::new(b"bin/su", b'0').mode(0o104755))
                .h(H::new(b"var/mail", b'5').mode(0o2775)),
            okd(
                vec![
                    x(Reg, "bin/su").mode(0o4755),
                    x(Dir, "var/mail").mode(0o2775),
                ],
                vec![(SETID, Action::Note)],
            ),
        ),
        with(
            pol(|p| p.setid = Verdict::Strip),
            layer(
                "G70 setid stripped",
                t().h(H::new(b"bin/su", b'0').mode(0o6755)),
                okd(
                    vec![x(Reg, "bin/su").mode(0o755)],
                    vec![(SETID, Action::Strip)],
                ),
            ),
        ),
        with(
            pol(|p| p.setid = Verdict::Reject),
            layer(
                "G70 setid rejected",
                t().h(H::new(b"bin/su", b'0').mode(0o4755)),
                no(SETID, "setuid"),
            ),
        ),
        layer(
            "G71 capability v2 kept, user xattr kept",
            t().pax(&[
                (b"SCHILY.xattr.security.capability", &cap_v2()),
                (b"SCHILY.xattr.user.mime", b"text/plain"),
            ])
            .file(b"bin/ping", b""),
            ok(vec![x(Reg, "bin/ping").xattrs(&[
                ("security.capability", &cap_v2()),
                ("user.mime", b"text/plain"),
            ])]),
        ),
        layer(
            "G71 capability v3 rootid 0 converted",
            t().pax(&[(b"SCHILY.xattr.security.capability", &cap_v3(0))])
                .file(b"bin/ping", b""),
            okd(
                vec![x(Reg, "bin/ping").xattrs(&[("security.capability", &cap_v2())])],
                vec![(XATTRS, Action::Note)],
            ),
        ),
        layer(
            "G71 capability v3 with a rootid",
            t().pax(&[(b"SCHILY.xattr.security.capability", &cap_v3(1))])
                .file(b"bin/ping", b""),
            no(XATTRS, "capability"),
        ),
        with(
            pol(|p| p.xattr_allow = vec!["user.".into()]),
            layer(
                "G71 capability not on the list stripped",
                t().pax(&[(b"SCHILY.xattr.security.capability", &cap_v2())])
                    .file(b"bin/ping", b""),
                okd(
                    vec![x(Reg, "bin/ping").xattrs(&[])],
                    vec![(XATTRS, Action::Strip)],
                ),
            ),
        ),
        layer(
            "G72 selinux, trusted and overlay xattrs stripped",
            t().pax(&[
                (
                    b"SCHILY.xattr.security.selinux",
                    b"system_u:object_r:bin_t:s0",
                ),
                (b"SCHILY.xattr.trusted.overlay.opaque", b"y"),
                (b"SCHILY.xattr.user.overlay.redirect", b"/x"),
                (b"SCHILY.xattr.system.nfs4_acl", b"..."),
            ])
            .dir(b"d"),
            okd(
                vec![x(Dir, "d").xattrs(&[])],
                vec![(XATTRS, Action::Strip); 4],
            ),
        ),
        with(
            pol(|p| p.other_xattrs = Verdict::Reject),
            layer(
                "G72 other xattrs rejected by policy",
                t().pax(&[(b"SCHILY.xattr.security.selinux", b"x")])
                    .file(b"f", b""),
                no(XATTRS, "not allowed"),
            ),
        ),
        with(
            pol(|p| {
                p.other_xattrs = Verdict::Reject;
                p.xattr_allow = vec!["trusted.".into()];
            }),
            layer(
                "G72 trusted never applied even if listed",
                t().pax(&[(b"SCHILY.xattr.trusted.overlay.opaque", b"y")])
                    .file(b"f", b""),
                no(XATTRS, "never applied"),
            ),
        ),
        layer(
            "G72 empty xattr name",
            t().pax(&[(b"SCHILY.xattr.", b"x")]).file(b"f", b""),
            no(XATTRS, "invalid xattr name"),
        ),
        layer(
            "G72 oversized xattr value",
            t().pax(&[(b"SCHILY.xattr.user.big", &[b'v'; 65537])])
                .file(b"f", b""),
            no(XATTRS, "64 KiB"),
        ),
        layer(
            "G72 LIBARCHIVE xattr",
            t().pax(&[(b"LIBARCHIVE.xattr.user.a%3Db", b"aGk=")])
                .file(b"f", b""),
            ok(vec![x(Reg, "f").xattrs(&[("user.a=b", b"hi")])]),
        ),
        layer(
            "G72 xattrs on a symlink and a hardlink dropped",
            t().pax(&[(b"SCHILY.xattr.user.a", b"1")])
                .sym(b"s", b"t")
                .pax(&[(b"SCHILY.xattr.user.b", b"2")])
                .hard(b"h", b"t"),
            okd(
                vec![x(Sym, "s").xattrs(&[]), x(Hardlink, "h").xattrs(&[])],
                vec![(XATTRS, Action::Note); 2],
            ),
        ),
        layer(
            "G73 two GNU long names",
            t().long(b'L', b"a").long(b'L', b"b").file(b"f", b""),
            no(MALFORMED, "two GNU long names"),
        ),
        layer(
            "G73 two GNU long links",
            t().long(b'K', b"a").long(b'K', b"b").hard(b"f", b""),
            no(MALFORMED, "two GNU long links"),
        ),
        layer(
            "G73 GNU long name with a NUL inside",
            t().long(b'L', b"a\0b").file(b"f", b""),
            no(MALFORMED, "NUL"),
        ),
        layer(
            "G73 empty GNU long name",
            t().ext(b'L', b"\0\0").file(b"f", b""),
            no(MALFORMED, "empty GNU long name"),
        ),
        layer(
            "G74 negative mtime clamped",
            t().h(H::new(b"f", b'0').mtime_raw(&[0xff; 12])),
            okd(vec![x(Reg, "f").mtime(0, 0)], vec![(MTIME, Action::Clamp)]),
        ),
        layer(
            "G74 PAX negative fractional mtime clamped",
            t().pax(&[(b"mtime", b"-5.5")]).file(b"f", b""),
            okd(vec![x(Reg, "f").mtime(0, 0)], vec![(MTIME, Action::Clamp)]),
        ),
        layer(
            "G74 far future mtime clamped",
            t().pax(&[(b"mtime", b"99999999999999999999999.5")])
                .file(b"f", b""),
            okd(
                vec![x(Reg, "f").mtime(253_402_300_799, 0)],
                vec![(MTIME, Action::Clamp)],
            ),
        ),
        layer(
            "G74 huge base-256 mtime clamped",
            t().h(H::new(b"f", b'0').mtime_raw(&b256(&[0x7f; 11], 12))),
            okd(
                vec![x(Reg, "f").mtime(253_402_300_799, 0)],
                vec![(MTIME, Action::Clamp)],
            ),
        ),
        layer(
            "G75 uid 2^32-1",
            t().h(H::new(b"f", b'0').uid(u64::from(u32::MAX))),
            no(MAX_ID, "uid 4294967295"),
        ),
        layer(
            "G75 uid 2^32 in PAX",
            t().pax(&[(b"uid", b"4294967296")]).file(b"f", b""),
            no(MAX_ID, "uid"),
        ),
        layer(
            "G75 gid beyond u64 in PAX",
            t().pax(&[(b"gid", b"99999999999999999999999")])
                .file(b"f", b""),
            no(MAX_ID, "gid"),
        ),
        layer(
            "G75 negative base-256 uid",
            t().h(H::new(b"f", b'0').at(108, &[0xff; 8])),
            no(MAX_ID, "uid -1"),
        ),
        layer(
            "G75 uid 4294967294 ok",
            t().h(H::new(b"f", b'0').uid(4_294_967_294)),
            ok(vec![x(Reg, "f").uid(4_294_967_294)]),
        ),
        with(
            pol(|p| p.max_id = 65535),
            layer(
                "G75 uid above the policy",
                t().h(H::new(b"f", b'0').uid(65536)),
                no(MAX_ID, "max 65535"),
            ),
        ),
        // Image archives.
        archive(layer(
            "F61 archive: duplicate member",
            t().file(b"manifest.json", b"[]")
                .file(b"./manifest.json", b"[]"),
            no(DUPLICATES, "twice"),
        )),
        archive(layer(
            "archive: names, links, no whiteouts, devices skipped silently, no metadata rules",
            t().file(b"abc/layer.tar", b"xyz")
                .sym(b"def/layer.tar", b"../abc/layer.tar")
                .file(b".wh.x", b"")
                .h(H::new(b"dev", b'3').dev(1, 1))
                .h(H::new(b"fifo", b'6'))
                .h(H::new(b"su", b'0')
                    .mode(0o4755)
                    .uid(u64::from(u32::MAX))
                    .mtime_raw(&[0xff; 12])),
            ok(vec![
                x(Reg, "abc/layer.tar").data(512, 3),
                x(Sym, "def/layer.tar").link("../abc/layer.tar"),
                x(Reg, ".wh.x"),
                x(Reg, "su").mode(0o4755).mtime(-1, 0),
            ]),
        )),
        archive(layer(
            "archive: `..` rejected",
            t().file(b"../x", b""),
            no(PATHS, "`..`"),
        )),
        archive(layer(
            "archive: duplicate directory noted",
            t().dir(b"d").dir(b"d"),
            okd(
                vec![x(Dir, "d"), x(Dir, "d")],
                vec![(DUPLICATES, Action::Note)],
            ),
        )),
    ];
    // Regression cases found by fuzzing are appended here.
    v.extend(fuzz_regressions());
    v
}

/// 16 components of 255 bytes: 4095 bytes.
fn long16() -> Vec<u8> {
    vec![vec![b'n'; 255]; 16].join(&b'/')
}

fn fuzz_regressions() -> Vec<Case> {
    vec![]
}

impl Tar {
    fn pax_global(self) -> Tar {
        self.h(
            H::new(b"pax_global_header", b'g').size(records(&[(b"comment", b"git")]).len() as u64)
        )
        .data(&records(&[(b"comment", b"git")]))
    }
}

#[test]
fn table() {
    let cases = cases();
    for c in &cases {
        check(c);
    }
    eprintln!("{} cases", cases.len());
}

#[test]
fn feeding_contract() {
    let input = Tar::new().file(b"f", &[1; 1000]).file(b"g", b"x").end().0;
    let mut c = Checker::new(Mode::Layer, Policy::default());
    let p = c.feed(0, &input[..600]).unwrap();
    assert_eq!(p.entries.len(), 1);
    assert_eq!(p.want, 512 + 1024);
    // Neither the end of the last slice nor `want`.
    let r = c.feed(700, &input[700..800]).unwrap_err();
    assert_eq!(r.rule, "malformed");
    assert!(
        r.reason
            .contains("internal: fed at offset 700, expected 1536"),
        "{r:?}"
    );

    // Feeding past `want` by skipping is refused too; finishing short of
    // what was fed is an internal error.
    let mut c = Checker::new(Mode::Layer, Policy::default());
    c.feed(0, &input[..512]).unwrap();
    assert!(c.feed(2048, &input[2048..]).is_err());
    let mut c = Checker::new(Mode::Layer, Policy::default());
    c.feed(0, &input).unwrap();
    let r = c.finish(100).unwrap_err();
    assert!(r.reason.contains("internal"), "{r:?}");
    let mut c = Checker::new(Mode::Layer, Policy::default());
    c.feed(0, &input).unwrap();
    c.finish(input.len() as u64).unwrap();
    assert!(c
        .feed(input.len() as u64, &[0])
        .unwrap_err()
        .reason
        .contains("after finish"));

    // The host skips the data and finishes at `want`.
    let mut c = Checker::new(Mode::Layer, Policy::default());
    let p = c.feed(0, &input[..512]).unwrap();
    assert_eq!(p.want, 1536);
    assert!(c.finish(1536).is_ok());
}

#[test]
fn data_spans_match_content() {
    let content: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let input = Tar::new()
        .pax(&[(b"path", "x".repeat(150).as_bytes())])
        .file(b"a", &content)
        .file(b"b", b"tail")
        .end()
        .0;
    let Outcome::Done(es, _) = run(&input, Mode::Layer, &Policy::default(), 1000, true) else {
        panic!()
    };
    let span = |e: &Entry| &input[e.data_offset as usize..(e.data_offset + e.data_size) as usize];
    assert_eq!(span(&es[0]), &content[..]);
    assert_eq!(span(&es[1]), b"tail");
}

// ---------------------------------------------------------------------------
// Real archives made by GNU tar.

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "tarcheck-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

#[test]
fn gnu_tar_archives() {
    use std::process::Command;
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("GNU tar not found: skipped");
        return;
    }
    let tmp = temp_dir();
    let src = tmp.0.join("src");
    let long_dir = "l".repeat(90);
    let long_file = format!("{long_dir}/{}", "n".repeat(120));
    std::fs::create_dir_all(src.join(&long_dir)).unwrap();
    let big: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(src.join(&long_file), &big).unwrap();
    std::fs::write(src.join("small"), b"hello\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs-link")).unwrap();
    std::fs::hard_link(src.join("small"), src.join("hard")).unwrap();
    // An xattr, when the filesystem and tools allow it.
    let with_xattr = Command::new("setfattr")
        .args(["-n", "user.test", "-v", "ok"])
        .arg(src.join("small"))
        .status()
        .or_else(|_| {
            Command::new("python3")
                .args([
                    "-c",
                    "import os,sys; os.setxattr(sys.argv[1], 'user.test', b'ok')",
                ])
                .arg(src.join("small"))
                .status()
        })
        .is_ok_and(|s| s.success());
    eprintln!("xattr set: {with_xattr}");
    for format in ["gnu", "pax"] {
        let out = tmp.0.join(format!("{format}.tar"));
        let mut cmd = Command::new("tar");
        cmd.arg(format!("--format={format}"))
            .args(["--sort=name", "-C"])
            .arg(&src)
            .arg("-cf")
            .arg(&out);
        if format == "pax" && with_xattr {
            cmd.arg("--xattrs");
        }
        let st = cmd.arg(".").status().unwrap();
        assert!(st.success());
        let input = std::fs::read(&out).unwrap();
        for chunk in [0, 1, 4096] {
            let got = run(&input, Mode::Layer, &Policy::default(), chunk, true);
            let Outcome::Done(es, ds) = got else {
                panic!("{format}: {got:?}")
            };
            assert_eq!(
                ds.first().map(|d| (d.rule.as_str(), d.action)),
                Some(("paths", Action::Skip)),
                "{ds:?}"
            );
            assert!(
                ds.iter()
                    .skip(1)
                    .all(|d| d.rule == "xattrs" && d.action == Action::Note),
                "{ds:?}"
            );
            let by = |p: &str| {
                es.iter()
                    .find(|e| e.path == p.as_bytes())
                    .unwrap_or_else(|| panic!("{format}: no {p} in {es:#?}"))
            };
            let span =
                |e: &Entry| &input[e.data_offset as usize..(e.data_offset + e.data_size) as usize];
            assert_eq!(span(by(&long_file)), &big[..]);
            assert_eq!(by(&long_dir).kind, EntryKind::Directory);
            let small = by("small");
            let abs = by("abs-link");
            assert_eq!(
                (abs.kind, abs.link.as_deref()),
                (EntryKind::Symlink, Some(&b"/etc/passwd"[..]))
            );
            // Sorted by name, `hard` is stored first and `small` links to it.
            let hard = by("hard");
            assert_eq!(span(hard), b"hello\n");
            assert_eq!(
                (small.kind, small.link.as_deref()),
                (EntryKind::Hardlink, Some(&b"hard"[..]))
            );
            if format == "pax" && with_xattr {
                assert_eq!(
                    hard.xattrs,
                    vec![Xattr {
                        name: "user.test".into(),
                        value: b"ok".to_vec()
                    }]
                );
            }
            assert_eq!(es.len(), 5, "{format}: {es:#?}");
        }
    }
}
