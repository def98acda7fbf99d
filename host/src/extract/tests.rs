//! Data-driven tests built from /work/shared/hostile-catalogue.md (section
//! letters and numbers in the case names). They run as root: ownership,
//! device nodes, xattrs and the overlay mount need it.

use super::*;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, Mode, OFlags};
use tar::{EntryType, Header};

use crate::core::policy::{Action, Policy};

/// The per-layer limits and device rule the cases vary (the rest of the
/// policy is the default one).
#[derive(Debug, Clone)]
struct ApplyOptions {
    max_entries: u64,
    max_bytes: u64,
    max_path_len: usize,
    device_nodes: DevicePolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DevicePolicy {
    Reject,
    Skip,
    Allow,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            max_entries: 10_000_000,
            max_bytes: 64 << 30,
            max_path_len: 4096,
            device_nodes: DevicePolicy::Reject,
        }
    }
}

impl ApplyOptions {
    fn policy(&self) -> Policy {
        let mut p = Policy::default_policy();
        p.max_layer_entries.limit = self.max_entries;
        p.max_layer_bytes.limit = self.max_bytes;
        p.max_path_bytes.limit = self.max_path_len as u64;
        p.device_nodes.action = match self.device_nodes {
            DevicePolicy::Reject => Action::Reject,
            DevicePolicy::Skip => Action::Skip,
            DevicePolicy::Allow => Action::Allow,
        };
        p
    }
}

/// Applies a layer through the real tar check guest.
fn apply_with<R: Read>(
    root: BorrowedFd<'_>,
    layer: R,
    policy: &Policy,
) -> Result<ApplyStats, ApplyError> {
    let mut check = crate::wasm::test_steps()
        .tar_check(view::Mode::Layer, policy)
        .expect("tar check session");
    apply_layer(root, layer, &mut check)
}

/// The input is to blame (not the environment, not a bug).
fn blames_input(e: &ApplyError) -> bool {
    matches!(
        e,
        ApplyError::Input(_) | ApplyError::Check(view::CheckError::Rejected { .. })
    )
}

/// The decisions of a layer as lines: "`path`: rule action detail".
fn decision_lines(stats: &ApplyStats) -> Vec<String> {
    stats
        .decisions
        .iter()
        .map(|d| format!("`{}`: {} {} {}", d.path, d.rule, d.action, d.detail))
        .collect()
}

// ---------------------------------------------------------------- tar input

/// One tar member (or raw bytes) of a test layer.
#[derive(Clone)]
enum T {
    /// Regular file, mode 0644.
    F(&'static str, &'static [u8]),
    /// Regular file with mode, uid, gid.
    Fm(&'static str, &'static [u8], u32, u64, u64),
    /// Regular file with a non-UTF-8 name.
    Fb(&'static [u8], &'static [u8]),
    /// Directory, mode 0755.
    D(&'static str),
    /// Directory with mode and mtime.
    Dm(&'static str, u32, u64),
    /// Symlink.
    L(&'static str, &'static str),
    /// Hardlink.
    H(&'static str, &'static str),
    Fifo(&'static str, u32),
    Chr(&'static str, u32, u32),
    Blk(&'static str, u32, u32),
    /// A member with any type byte and `size` bytes of data.
    Ty(&'static str, u8, usize),
    /// PAX records attached to the next member.
    Pax(Vec<(&'static str, Vec<u8>)>, Box<T>),
    /// Raw bytes appended to the stream.
    Raw(Vec<u8>),
}

fn pax_record(key: &str, val: &[u8]) -> Vec<u8> {
    let body = key.len() + val.len() + 3; // ' ', '=', '\n'
    let mut n = body + 1;
    while n.to_string().len() + body != n {
        n = n.to_string().len() + body;
    }
    let mut r = format!("{n} {key}=").into_bytes();
    r.extend_from_slice(val);
    r.push(b'\n');
    r
}

/// A ustar header with raw name bytes (the Builder refuses `..` and
/// absolute names), size, mode, uid/gid 0 and a fixed mtime.
fn header(name: &[u8], ty: EntryType, size: u64, mode: u32) -> Header {
    let mut h = Header::new_ustar();
    assert!(
        name.len() <= 100,
        "test names must fit the ustar name field"
    );
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_000_000_000);
    h
}

fn with_link(mut h: Header, target: &str) -> Header {
    h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
    h
}

fn append(b: &mut tar::Builder<Vec<u8>>, mut h: Header, data: &[u8]) {
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn add(b: &mut tar::Builder<Vec<u8>>, t: &T) {
    match t {
        T::F(n, d) => append(
            b,
            header(n.as_bytes(), EntryType::Regular, d.len() as u64, 0o644),
            d,
        ),
        T::Fm(n, d, m, u, g) => {
            let mut h = header(n.as_bytes(), EntryType::Regular, d.len() as u64, *m);
            h.set_uid(*u);
            h.set_gid(*g);
            append(b, h, d)
        }
        T::Fb(n, d) => append(b, header(n, EntryType::Regular, d.len() as u64, 0o644), d),
        T::D(n) => append(b, header(n.as_bytes(), EntryType::Directory, 0, 0o755), &[]),
        T::Dm(n, m, t) => {
            let mut h = header(n.as_bytes(), EntryType::Directory, 0, *m);
            h.set_mtime(*t);
            append(b, h, &[])
        }
        T::L(n, l) => append(
            b,
            with_link(header(n.as_bytes(), EntryType::Symlink, 0, 0o777), l),
            &[],
        ),
        T::H(n, l) => append(
            b,
            with_link(header(n.as_bytes(), EntryType::Link, 0, 0o644), l),
            &[],
        ),
        T::Fifo(n, m) => append(b, header(n.as_bytes(), EntryType::Fifo, 0, *m), &[]),
        T::Chr(n, ma, mi) | T::Blk(n, ma, mi) => {
            let ty = if matches!(t, T::Chr(..)) {
                EntryType::Char
            } else {
                EntryType::Block
            };
            let mut h = header(n.as_bytes(), ty, 0, 0o600);
            h.set_device_major(*ma).unwrap();
            h.set_device_minor(*mi).unwrap();
            append(b, h, &[])
        }
        T::Ty(n, ty, size) => {
            let mut h = header(n.as_bytes(), EntryType::Regular, *size as u64, 0o644);
            h.as_old_mut().linkflag[0] = *ty; // raw: EntryType folds NUL into '0'
            append(b, h, &vec![7u8; *size])
        }
        T::Pax(recs, next) => {
            let data: Vec<u8> = recs.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            append(
                b,
                header(b"PaxHeader", EntryType::XHeader, data.len() as u64, 0o644),
                &data,
            );
            add(b, next);
        }
        T::Raw(bytes) => b.get_mut().extend_from_slice(bytes),
    }
}

fn tar_bytes(entries: &[T]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for t in entries {
        add(&mut b, t);
    }
    b.into_inner().unwrap()
}

fn pax(recs: &[(&'static str, &[u8])], next: T) -> T {
    T::Pax(
        recs.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
        Box::new(next),
    )
}

// ------------------------------------------------------------ expectations

#[derive(Clone, Debug)]
enum X {
    File(&'static str, &'static [u8]),
    FileB(&'static [u8]),
    Dir(&'static str),
    Sym(&'static str, &'static str),
    Fifo(&'static str),
    Chr(&'static str, u32, u32),
    Gone(&'static str),
    Mode(&'static str, u32),
    Owner(&'static str, u32, u32),
    Mtime(&'static str, i64),
    SameIno(&'static str, &'static str),
    Xattr(&'static str, &'static str, &'static [u8]),
    NoXattr(&'static str, &'static str),
    /// Exact sorted child names.
    Children(&'static str, &'static [&'static str]),
    /// Some line of `stats.skipped` contains this.
    Skipped(&'static str),
    Stats(fn(&ApplyStats) -> bool),
}

/// The test sandbox: `base/root` is the layer root; `base/victim`,
/// `base/test`, `base/dest-evil` are sentinels that must never change.
struct Sandbox {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let root = base.join("root");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(base.join("victim")).unwrap();
        fs::write(base.join("victim/hello"), b"sentinel").unwrap();
        fs::set_permissions(base.join("victim/hello"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(base.join("test"), b"outside").unwrap();
        fs::create_dir(base.join("dest-evil")).unwrap();
        fs::write(base.join("dest-evil/secret"), b"secret").unwrap();
        Sandbox {
            _tmp: tmp,
            base,
            root,
        }
    }

    fn root_fd(&self) -> OwnedFd {
        rfs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    fn apply(&self, bytes: &[u8], opts: &ApplyOptions) -> Result<ApplyStats, ApplyError> {
        apply_with(self.root_fd().as_fd(), bytes, &opts.policy())
    }

    /// Everything outside the root, described without following symlinks.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.base.clone()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p == self.root {
                    continue;
                }
                let m = fs::symlink_metadata(&p).unwrap();
                let mut desc = format!(
                    "{:o} {}:{} {} {}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.nlink()
                );
                if m.is_dir() {
                    stack.push(p.clone());
                } else if m.is_file() {
                    desc += &format!(" {:?}", fs::read(&p).unwrap());
                }
                out.insert(p, desc);
            }
        }
        let m = fs::symlink_metadata(&self.base).unwrap();
        out.insert(self.base.clone(), format!("{:o} {}", m.mode(), m.mtime()));
        out
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn xattr(p: &Path, key: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    match rfs::lgetxattr(p, key, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

fn verify(sb: &Sandbox, stats: &ApplyStats, x: &X) {
    let meta = |rel: &str| {
        fs::symlink_metadata(sb.p(rel)).unwrap_or_else(|e| panic!("{rel}: {e} (expected to exist)"))
    };
    match x {
        X::File(p, d) => {
            assert!(meta(p).is_file(), "{p} is not a regular file");
            assert_eq!(fs::read(sb.p(p)).unwrap(), *d, "{p} content");
        }
        X::FileB(p) => {
            let path = sb.root.join(std::ffi::OsStr::from_bytes(p));
            assert!(fs::symlink_metadata(path).unwrap().is_file());
        }
        X::Dir(p) => assert!(meta(p).is_dir(), "{p} is not a directory"),
        X::Sym(p, t) => {
            assert!(meta(p).file_type().is_symlink(), "{p} is not a symlink");
            assert_eq!(fs::read_link(sb.p(p)).unwrap(), Path::new(t), "{p} target");
        }
        X::Fifo(p) => assert!(meta(p).file_type().is_fifo(), "{p} is not a fifo"),
        X::Chr(p, ma, mi) => {
            let m = meta(p);
            assert!(m.file_type().is_char_device(), "{p} is not a char device");
            assert_eq!(m.rdev(), rfs::makedev(*ma, *mi));
        }
        X::Gone(p) => assert!(
            fs::symlink_metadata(sb.p(p)).is_err(),
            "{p} should not exist"
        ),
        X::Mode(p, m) => assert_eq!(meta(p).mode() & 0o7777, *m, "{p} mode"),
        X::Owner(p, u, g) => assert_eq!((meta(p).uid(), meta(p).gid()), (*u, *g), "{p} owner"),
        X::Mtime(p, t) => assert_eq!(meta(p).mtime(), *t, "{p} mtime"),
        X::SameIno(a, b) => assert_eq!(
            meta(a).ino(),
            meta(b).ino(),
            "{a} and {b} are not one inode"
        ),
        X::Xattr(p, k, v) => assert_eq!(xattr(&sb.p(p), k).as_deref(), Some(*v), "{p} xattr {k}"),
        X::NoXattr(p, k) => assert_eq!(xattr(&sb.p(p), k), None, "{p} xattr {k}"),
        X::Children(p, want) => {
            let mut got: Vec<String> = fs::read_dir(sb.p(p))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            got.sort();
            assert_eq!(got, *want, "children of `{p}`");
        }
        X::Skipped(s) => assert!(
            decision_lines(stats).iter().any(|l| l.contains(s)),
            "no decision contains {s:?}: {:?}",
            decision_lines(stats)
        ),
        X::Stats(f) => assert!(f(stats), "stats check failed: {stats:?}"),
    }
}

type Want = Result<&'static [X], &'static str>;

/// Applies `lower` (as a previous layer, devices allowed), then `layer`
/// with `opts`; checks the tree or the error, and that nothing outside the
/// root changed.
fn check_opts(name: &str, lower: &[T], layer: &[T], opts: &ApplyOptions, want: Want) {
    let sb = Sandbox::new();
    let lower_opts = ApplyOptions {
        device_nodes: DevicePolicy::Allow,
        ..ApplyOptions::default()
    };
    if !lower.is_empty() {
        sb.apply(&tar_bytes(lower), &lower_opts)
            .unwrap_or_else(|e| panic!("{name}: lower layer failed: {e}"));
    }
    let before = sb.outside();
    let res = sb.apply(&tar_bytes(layer), opts);
    assert_eq!(
        before,
        sb.outside(),
        "{name}: something outside the root changed"
    );
    match (res, want) {
        (Ok(stats), Ok(xs)) => {
            for x in xs {
                verify(&sb, &stats, x);
            }
        }
        (Err(e), Err(sub)) => {
            let msg = e.to_string();
            assert!(
                msg.contains(sub),
                "{name}: error {msg:?} does not contain {sub:?}"
            );
            assert!(!msg.contains('\n'), "{name}: multi-line error {msg:?}");
            let base = sb.base.to_string_lossy();
            assert!(!msg.contains(&*base), "{name}: host path in error {msg:?}");
        }
        (Ok(stats), Err(sub)) => panic!("{name}: expected error {sub:?}, got Ok({stats:?})"),
        (Err(e), Ok(_)) => panic!("{name}: unexpected error: {e}"),
    }
}

fn check(name: &str, lower: &[T], layer: &[T], want: Want) {
    check_opts(name, lower, layer, &ApplyOptions::default(), want)
}

use T::*;

// ------------------------------------------------------------------- tables

#[test]
fn a_paths() {
    let cases: Vec<(&str, Vec<T>, Vec<T>, Want)> = vec![
        (
            "A1 ../victim",
            vec![],
            vec![F("../victim/dotdot", b"x")],
            Err("`..`"),
        ),
        (
            "A1 some/../../x",
            vec![],
            vec![F("some/../../x", b"x")],
            Err("`..`"),
        ),
        ("A1 ./../x", vec![], vec![F("./../x", b"x")], Err("`..`")),
        ("A2 bare ..", vec![], vec![D("..")], Err("`..`")),
        (
            "A2 ../pwned",
            vec![],
            vec![F("../pwned", b"x")],
            Err("`..`"),
        ),
        (
            "A2 /////////..",
            vec![],
            vec![D("/////////..")],
            Err("`..`"),
        ),
        ("A2 ././//./..", vec![], vec![D("././//./..")], Err("`..`")),
        (
            "A3 absolute confined",
            vec![],
            vec![
                F("/tmp/abs_evil.txt", b"a"),
                F("//tmp/x", b"b"),
                F("///./tmp/y", b"c"),
            ],
            Ok(&[
                X::File("tmp/abs_evil.txt", b"a"),
                X::File("tmp/x", b"b"),
                X::File("tmp/y", b"c"),
            ]),
        ),
        (
            "A3 /../victim",
            vec![],
            vec![F("/../victim/x", b"x")],
            Err("`..`"),
        ),
        (
            "A4 root names skipped",
            vec![],
            vec![
                Dm(".", 0o777, 5),
                Dm("/", 0o700, 5),
                Dm("", 0o777, 5),
                Dm("/////////", 0o777, 5),
            ],
            Ok(&[
                X::Mode("", 0o755),
                X::Skipped("paths skip entry for the root skipped"),
                X::Stats(|s| s.dirs == 0),
            ]),
        ),
        (
            "A5 root as symlink",
            vec![],
            vec![L("/.", "/etc")],
            Err("entry for the root is not a directory (rule paths)"),
        ),
        (
            "A5 root as file",
            vec![],
            vec![F(".", b"x")],
            Err("entry for the root is not a directory (rule paths)"),
        ),
        (
            "A6 look-alikes",
            vec![],
            vec![F("..gitme", b"1"), F(".bashrc", b"2"), F("a..b/..c", b"3")],
            Ok(&[
                X::File("..gitme", b"1"),
                X::File(".bashrc", b"2"),
                X::File("a..b/..c", b"3"),
            ]),
        ),
        (
            "A7 Windows absolute path",
            vec![],
            vec![F("\\tmp\\evil", b"1")],
            Err("starts with a backslash (rule paths)"),
        ),
        (
            "A7 Windows climbing path",
            vec![],
            vec![F("..\\..\\tmp\\evil", b"2")],
            Err("(rule paths)"),
        ),
        (
            "A7 drive letter",
            vec![],
            vec![F("C:..\\evil", b"3")],
            Err("(rule paths)"),
        ),
        (
            "A7 other backslashes are literal (systemd unit names)",
            vec![],
            vec![F(
                "etc/systemd/system/system-systemd\\x2dcryptsetup.slice",
                b"1",
            )],
            Ok(&[X::File(
                "etc/systemd/system/system-systemd\\x2dcryptsetup.slice",
                b"1",
            )]),
        ),
        (
            "non-UTF-8 name",
            vec![],
            vec![Fb(b"caf\xe9", b"x")],
            Ok(&[X::FileB(b"caf\xe9")]),
        ),
        (
            "E44 path too long (PAX)",
            vec![],
            vec![pax(&[("path", &b"a/".repeat(2100))], F("x", b""))],
            Err("longer than 4096"),
        ),
        (
            "E44 component too long",
            vec![],
            vec![pax(&[("path", &[b'n'; 300])], F("x", b""))],
            Err("longer than 255"),
        ),
        (
            "E44 too deep",
            vec![],
            vec![pax(&[("path", &b"d/".repeat(300))], D("x"))],
            Err("256 levels"),
        ),
        (
            "NUL in PAX path",
            vec![],
            vec![pax(&[("path", b"a\0b")], F("x", b""))],
            Err("NUL"),
        ),
        (
            "long PAX path ok",
            vec![],
            vec![pax(
                &[("path", format!("{}/f", "p".repeat(200)).as_bytes())],
                F("x", b"long"),
            )],
            Ok(&[X::Stats(|s| s.files == 1)]),
        ),
        (
            "E45 duplicates: later wins",
            vec![],
            vec![F("a", b"1"), F("a", b"2")],
            Ok(&[X::File("a", b"2")]),
        ),
        (
            "missing parents created 0755 root",
            vec![],
            vec![Fm("p/q/r", b"x", 0o600, 7, 8)],
            Ok(&[
                X::Dir("p/q"),
                X::Mode("p", 0o755),
                X::Mode("p/q", 0o755),
                X::Owner("p/q", 0, 0),
            ]),
        ),
        (
            "old-style dir (trailing slash, type NUL)",
            vec![],
            vec![Ty("olddir/", 0, 0), F("olddir/f", b"x")],
            Ok(&[X::Dir("olddir"), X::File("olddir/f", b"x")]),
        ),
        (
            "regular with trailing slash",
            vec![],
            vec![F("reg/", b"")],
            Err("ends with `/`"),
        ),
    ];
    for (n, lower, layer, want) in cases {
        check(n, &lower, &layer, want);
    }
}

#[test]
fn b_symlinks() {
    let host_probe = "tarpool-extract-test-host-probe";
    assert!(!Path::new("/tmp").join(host_probe).exists());
    let cases: Vec<(&str, Vec<T>, Vec<T>, Want)> = vec![
        (
            "B8 loophole -> ../victim",
            vec![],
            vec![L("loophole", "../victim"), F("loophole/file", b"in")],
            Ok(&[
                X::Sym("loophole", "../victim"),
                X::File("victim/file", b"in"),
            ]),
        ),
        (
            "B8 dir/loophole -> ../../victim",
            vec![],
            vec![
                L("dir/loophole", "../../victim"),
                F("dir/loophole/newdir/newfile", b"in"),
            ],
            Ok(&[
                X::File("victim/newdir/newfile", b"in"),
                X::Mode("victim/newdir", 0o755),
            ]),
        ),
        (
            "B8 loophole to existing sentinel-named dir in root",
            vec![D("victim")],
            vec![
                L("loophole", "../victim"),
                F("loophole/hello", b"overwritten in root"),
            ],
            Ok(&[X::File("victim/hello", b"overwritten in root")]),
        ),
        (
            "B9 localetc -> /etc",
            vec![],
            vec![L("localetc", "/etc"), F("/localetc/unbroken", b"u")],
            Ok(&[X::File("etc/unbroken", b"u"), X::Sym("localetc", "/etc")]),
        ),
        (
            "B9 lower var/run -> /run (dangling)",
            vec![L("var/run", "/run")],
            vec![F("var/run/x/y/file", b"f")],
            Ok(&[X::File("run/x/y/file", b"f"), X::Sym("var/run", "/run")]),
        ),
        (
            "B9 foo -> / then foo/tmp/probe",
            vec![],
            vec![
                L("foo", "/"),
                F("foo/tmp/tarpool-extract-test-host-probe", b"p"),
            ],
            Ok(&[X::File("tmp/tarpool-extract-test-host-probe", b"p")]),
        ),
        (
            "B10 two-hop",
            vec![],
            vec![
                L("inner/go_up", ".."),
                L("inner/go_up/escape", "../victim"),
                F("inner/go_up/escape/newfile", b"n"),
            ],
            Ok(&[
                X::Sym("escape", "../victim"),
                X::File("victim/newfile", b"n"),
            ]),
        ),
        (
            "B11 escape -> .. then absolute",
            vec![L("escape", ".."), L("absolute", "/target")],
            vec![F("escape/absolute/file", b"f")],
            Ok(&[X::File("target/file", b"f")]),
        ),
        (
            "B12 symlink named ..",
            vec![],
            vec![L("..", "/etc/")],
            Err("`..`"),
        ),
        (
            "B12 symlink sub/..",
            vec![],
            vec![L("localetc/sub/..", "/etc/")],
            Err("`..`"),
        ),
        (
            "B12 symlink with empty target",
            vec![],
            vec![L("empty", "")],
            Err("empty target"),
        ),
        (
            "B13 symlink replaces dir",
            vec![F("localetc/old", b"o"), F("etc/passwd", b"p")],
            vec![L("localetc", "/etc"), F("localetc/x", b"x")],
            Ok(&[
                X::Sym("localetc", "/etc"),
                X::File("etc/x", b"x"),
                X::File("etc/passwd", b"p"),
            ]),
        ),
        (
            "B13 dir replaces symlink",
            vec![L("localetc", "/etc"), F("etc/passwd", b"p")],
            vec![D("localetc"), F("localetc/x", b"x")],
            Ok(&[
                X::Dir("localetc"),
                X::File("localetc/x", b"x"),
                X::Children("etc", &["passwd"]),
            ]),
        ),
        (
            "B14 foo -> outside, then dir foo 0777",
            vec![],
            vec![L("foo", "../victim"), Dm("foo", 0o777, 5)],
            Ok(&[X::Dir("foo"), X::Mode("foo", 0o777), X::Mtime("foo", 5)]),
        ),
        (
            "B14 lower foo -> outside, then dir foo 0777",
            vec![L("foo", "../victim")],
            vec![Dm("foo", 0o777, 5)],
            Ok(&[X::Dir("foo"), X::Mode("foo", 0o777)]),
        ),
        (
            "B15 symlink override path",
            vec![],
            vec![
                F("foo/tmp/x", b"1"),
                L("foo", "/"),
                F("foo/tmp/x", b"2"),
                D("foo"),
                F("foo/tmp/x", b"3"),
            ],
            Ok(&[X::File("foo/tmp/x", b"3"), X::File("tmp/x", b"2")]),
        ),
        (
            "B16 foo -> ../test then reg foo",
            vec![],
            vec![L("foo", "../test"), F("foo", b"new")],
            Ok(&[X::File("foo", b"new")]),
        ),
        (
            "B16 lower file, reg through symlink parent chmod",
            vec![L("victimlink", "../victim")],
            vec![Fm("victimlink/hello", b"x", 0o4777, 0, 0)],
            Ok(&[
                X::File("victim/hello", b"x"),
                X::Mode("victim/hello", 0o4777),
            ]),
        ),
        (
            "absolute symlink targets are kept literally",
            vec![],
            vec![L("etc/alternatives/cc", "/usr/bin/gcc")],
            Ok(&[
                X::Sym("etc/alternatives/cc", "/usr/bin/gcc"),
                X::Gone("usr"),
            ]),
        ),
        (
            "B symlink loop parent",
            vec![L("a", "b"), L("b", "a")],
            vec![F("a/x", b"")],
            Err(""),
        ),
    ];
    for (n, lower, layer, want) in cases {
        check(n, &lower, &layer, want);
    }
    assert!(
        !Path::new("/tmp").join(host_probe).exists(),
        "wrote to the host /tmp"
    );
}

#[test]
fn c_hardlinks() {
    let cases: Vec<(&str, Vec<T>, Vec<T>, Want)> = vec![
        (
            "C17 ../victim/hello",
            vec![],
            vec![H("dotdot", "../victim/hello")],
            Err("`..`"),
        ),
        (
            "C17 /../victim/hello",
            vec![],
            vec![H("dotdot", "/../victim/hello")],
            Err("`..`"),
        ),
        (
            "C18 absolute link name confined",
            vec![],
            vec![
                F("usr/bin/perlbug", b"pl"),
                H("usr/bin/perlthanks", "/usr/bin/perlbug"),
            ],
            Ok(&[
                X::SameIno("usr/bin/perlbug", "usr/bin/perlthanks"),
                X::Stats(|s| s.hardlinks == 1),
            ]),
        ),
        (
            "C19 through symlinked dir",
            vec![F("etc/passwd", b"p"), L("breakouts/d1", "../../etc")],
            vec![H("x", "/breakouts/d1/passwd")],
            Ok(&[X::SameIno("x", "etc/passwd")]),
        ),
        (
            "C19 to sentinel through symlink resolves in root",
            vec![L("up", "../victim")],
            vec![H("x", "up/hello")],
            Err("does not exist"),
        ),
        (
            "C20 hardlink to symlink",
            vec![],
            vec![
                F("regfile", b"r"),
                L("symlink1", "regfile"),
                H("symlink2", "symlink1"),
            ],
            Ok(&[
                X::Sym("symlink2", "regfile"),
                X::SameIno("symlink1", "symlink2"),
            ]),
        ),
        (
            "C20 hardlink to absolute symlink",
            vec![],
            vec![L("abs", "/etc/passwd"), H("abs2", "abs")],
            Ok(&[X::Sym("abs2", "/etc/passwd"), X::SameIno("abs", "abs2")]),
        ),
        (
            "C21 hardlink to outward symlink, then chmod",
            vec![],
            vec![
                L("also-outside", "../victim/hello"),
                H("sketchylink", "also-outside"),
                Fm("sketchylink", b"replaced", 0o777, 0, 0),
            ],
            Ok(&[
                X::File("sketchylink", b"replaced"),
                X::Sym("also-outside", "../victim/hello"),
            ]),
        ),
        (
            "C22 loophole-victim",
            vec![],
            vec![H("loophole-victim", "../victim")],
            Err("`..`"),
        ),
        (
            "C23 foo -> ../test",
            vec![],
            vec![H("foo", "../test"), F("foo", b"x")],
            Err("`..`"),
        ),
        (
            "C24 prefix sibling",
            vec![],
            vec![H("grab", "../dest-evil/secret")],
            Err("`..`"),
        ),
        (
            "C25 forward reference",
            vec![],
            vec![H("early", "later"), F("later", b"x")],
            Err("hardlink target `later` does not exist"),
        ),
        (
            "C hardlink to dir",
            vec![],
            vec![D("d"), H("l", "d")],
            Err("is a directory"),
        ),
        ("C hardlink to root", vec![], vec![H("l", "/")], Err("root")),
        (
            "C file replacing a hardlink keeps the other name",
            vec![],
            vec![F("a", b"original"), H("b", "a"), F("b", b"new")],
            Ok(&[X::File("a", b"original"), X::File("b", b"new")]),
        ),
        (
            "C file replacing a lower hardlinked name",
            vec![F("a", b"original"), H("b", "a")],
            vec![F("a", b"new")],
            Ok(&[X::File("a", b"new"), X::File("b", b"original")]),
        ),
        (
            "C link to itself is refused",
            vec![F("a", b"x")],
            vec![H("a", "a")],
            Err("hardlink to itself (rule hardlinks)"),
        ),
        (
            "C hardlink to a lower file",
            vec![F("lib/x.so", b"elf")],
            vec![H("lib/y.so", "lib/x.so")],
            Ok(&[X::SameIno("lib/x.so", "lib/y.so")]),
        ),
        (
            "C hardlink replaces existing dir",
            vec![F("t", b"t"), F("d/inner", b"i")],
            vec![H("d", "t")],
            Ok(&[X::SameIno("d", "t")]),
        ),
    ];
    for (n, lower, layer, want) in cases {
        check(n, &lower, &layer, want);
    }
}

#[test]
fn d_whiteouts() {
    let cases: Vec<(&str, Vec<T>, Vec<T>, Want)> = vec![
        (
            "D whiteout a file",
            vec![F("a/x", b"x"), F("a/y", b"y")],
            vec![F("a/.wh.x", b"")],
            Ok(&[X::Children("a", &["y"]), X::Stats(|s| s.whiteouts == 1)]),
        ),
        (
            "D whiteout a dir recursively",
            vec![F("d/e/f/g", b"x"), F("keep", b"k")],
            vec![F(".wh.d", b"")],
            Ok(&[X::Children("", &["keep"])]),
        ),
        (
            "D26 .wh.",
            vec![],
            vec![F(".wh.", b"")],
            Err("invalid whiteout"),
        ),
        (
            "D26 .wh..",
            vec![],
            vec![F(".wh..", b"")],
            Err("invalid whiteout"),
        ),
        (
            "D26 .wh...",
            vec![],
            vec![F(".wh...", b"")],
            Err("invalid whiteout"),
        ),
        (
            "D26 etc/.wh..",
            vec![],
            vec![F("etc/.wh..", b"")],
            Err("invalid whiteout"),
        ),
        (
            "D27 whiteout under symlinked parent stays in root",
            vec![
                F("etc/whitedout", b"w"),
                F("etc/other", b"o"),
                L("localetc", "/etc"),
            ],
            vec![F("localetc/.wh.whitedout", b"")],
            Ok(&[X::Children("etc", &["other"])]),
        ),
        (
            "D27 whiteout under dead-link parent",
            vec![L("dead", "/nonexistent")],
            vec![F("dead/.wh.x", b"")],
            Ok(&[X::Sym("dead", "/nonexistent"), X::Gone("nonexistent")]),
        ),
        (
            "D27 whiteout through outward symlink",
            vec![L("out", "../victim")],
            vec![F("out/.wh.hello", b"")],
            Ok(&[X::Sym("out", "../victim")]),
        ),
        (
            "D27 dne/../.wh.etc",
            vec![],
            vec![F("dne/../.wh.etc", b"")],
            Err("`..`"),
        ),
        (
            "D28 whiteout of a symlink removes the link only",
            vec![F("etc/passwd", b"p"), L("localetc", "/etc")],
            vec![F(".wh.localetc", b"")],
            Ok(&[X::Gone("localetc"), X::File("etc/passwd", b"p")]),
        ),
        (
            "D29 .wh.etc/somefile",
            vec![],
            vec![F(".wh.etc/somefile", b"")],
            Err("`.wh.`"),
        ),
        (
            "D30 entry then whiteout",
            vec![],
            vec![F("fileA", b"a"), F(".wh.fileA", b"")],
            Err("whiteout and entry for `fileA` in the same layer"),
        ),
        (
            "D30 child then whiteout of parent",
            vec![],
            vec![F("a/b", b"b"), F(".wh.a", b"")],
            Err("whiteout and entry for `a`"),
        ),
        (
            "D30 whiteout then recreate (lower replaced)",
            vec![F("fileA/old", b"o")],
            vec![F(".wh.fileA", b""), F("fileA", b"new")],
            Ok(&[X::File("fileA", b"new")]),
        ),
        (
            "D31 opaque marker first",
            vec![F("a/old", b"o"), F("a/sub/old2", b"o"), F("b/keep", b"k")],
            vec![D("a"), F("a/.wh..wh..opq", b""), F("a/new", b"n")],
            Ok(&[
                X::Children("a", &["new"]),
                X::File("b/keep", b"k"),
                X::Stats(|s| s.opaque_dirs == 1),
            ]),
        ),
        (
            "D31 opaque marker last",
            vec![
                F("a/old", b"o"),
                F("a/sub/old2", b"o"),
                F("a/sub/deeper/x", b"o"),
                L("a/ln", "/"),
            ],
            vec![
                D("a"),
                D("a/sub"),
                F("a/new", b"n"),
                F("a/sub/new2", b"n"),
                F("a/.wh..wh..opq", b""),
            ],
            Ok(&[
                X::Children("a", &["new", "sub"]),
                X::Children("a/sub", &["new2"]),
            ]),
        ),
        (
            "D31 opaque in the middle, implicit parents kept",
            vec![F("a/old", b"o"), F("a/p/q/old", b"o")],
            vec![
                F("a/p/q/new", b"n"),
                F("a/.wh..wh..opq", b""),
                F("a/later", b"l"),
            ],
            Ok(&[
                X::Children("a", &["later", "p"]),
                X::Children("a/p/q", &["new"]),
            ]),
        ),
        (
            "D31 nested opaque markers",
            vec![F("a/old", b"o"), F("a/b/old", b"o"), F("a/b/c/old", b"o")],
            vec![
                F("a/b/c/.wh..wh..opq", b""),
                F("a/b/c/n", b""),
                F("a/b/.wh..wh..opq", b""),
                F("a/.wh..wh..opq", b""),
                F("a/b/.wh..wh..opq", b""),
            ],
            Ok(&[
                X::Children("a", &["b"]),
                X::Children("a/b", &["c"]),
                X::Children("a/b/c", &["n"]),
            ]),
        ),
        (
            "D31 root opaque",
            vec![F("x", b"x"), F("d/y", b"y")],
            vec![F(".wh..wh..opq", b""), F("z", b"z")],
            Ok(&[X::Children("", &["z"])]),
        ),
        (
            "D31 opaque on a lower symlink is not followed",
            vec![F("etc/passwd", b"p"), L("a", "/etc")],
            vec![F("a/.wh..wh..opq", b"")],
            Ok(&[X::File("etc/passwd", b"p"), X::Skipped("non-directory")]),
        ),
        (
            "D31 opaque then whiteout of the opaque dir",
            vec![],
            vec![F("a/.wh..wh..opq", b""), F(".wh.a", b"")],
            Err("same layer"),
        ),
        (
            "D32 whiteout of a missing path",
            vec![],
            vec![F(".wh.nothing", b""), F("nodir/.wh.x", b"")],
            Ok(&[X::Stats(|s| s.whiteouts == 2), X::Children("", &[])]),
        ),
        (
            "D33 whiteout as symlink",
            vec![],
            vec![L(".wh.x", "y")],
            Err("empty regular file"),
        ),
        (
            "D33 whiteout as dir",
            vec![],
            vec![D(".wh.x")],
            Err("empty regular file"),
        ),
        (
            "D33 whiteout with data",
            vec![],
            vec![F(".wh.x", b"data")],
            Err("empty regular file"),
        ),
        (
            "D33 whiteout as hardlink",
            vec![F("y", b"")],
            vec![H(".wh.x", "y")],
            Err("empty regular file"),
        ),
        (
            "D34 aufs plnk",
            vec![],
            vec![F(".wh..wh.plnk/123", b"")],
            Err("`.wh.`"),
        ),
        (
            "D34 aufs meta",
            vec![],
            vec![F(".wh..wh.aufs", b"")],
            Err("AUFS"),
        ),
        (
            "D35 char 0:0 is a device, not a whiteout",
            vec![F("x", b"x")],
            vec![Chr("x", 0, 0)],
            Err("device nodes are not allowed"),
        ),
    ];
    for (n, lower, layer, want) in cases {
        check(n, &lower, &layer, want);
    }
}

#[test]
fn e_limits_and_stream() {
    static BIG: [u8; 10_000] = [b'z'; 10_000];
    let full = tar_bytes(&[F("big", &BIG)]);
    let mut truncated = full.clone();
    truncated.truncate(512 + 3000);
    let mut half_header = tar_bytes(&[F("a", b"x")]);
    half_header.truncate(512 + 512 + 100);
    half_header[1024..1124].fill(b'q');
    let mut junk = tar_bytes(&[F("a", b"x")]);
    junk.extend_from_slice(b"hidden entry");
    let mut bad_sum = tar_bytes(&[F("a", b"x")]);
    bad_sum[0] = b'b';

    let sb = Sandbox::new();
    let e = sb.apply(&truncated, &ApplyOptions::default()).unwrap_err();
    assert!(e.to_string().contains("truncated inside `big`"), "{e}");
    assert!(blames_input(&e), "{e:?}");
    let e = sb
        .apply(&half_header, &ApplyOptions::default())
        .unwrap_err();
    assert!(blames_input(&e), "{e}");
    let e = sb.apply(&junk, &ApplyOptions::default()).unwrap_err();
    assert!(e.to_string().contains("non-zero data after the end"), "{e}");
    let e = sb.apply(&bad_sum, &ApplyOptions::default()).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    // An empty stream and a bare end-of-archive are empty layers (E58).
    assert_eq!(sb.apply(&[], &ApplyOptions::default()).unwrap().entries, 0);
    assert_eq!(
        sb.apply(&[0u8; 1024], &ApplyOptions::default())
            .unwrap()
            .entries,
        0
    );

    let cases: Vec<(&str, Vec<T>, ApplyOptions, Want)> = vec![
        (
            "E36 2 MiB PAX header",
            vec![pax(&[("comment", &vec![b'c'; 2 << 20])], F("x", b""))],
            ApplyOptions::default(),
            Err("over the 1048576-byte limit (rule max-ext-header-bytes)"),
        ),
        (
            "E37 PAX size smuggling",
            vec![Raw({
                let recs = pax_record("size", b"2048");
                let mut b = tar::Builder::new(Vec::new());
                append(
                    &mut b,
                    header(b"PaxHeader", EntryType::XHeader, recs.len() as u64, 0o644),
                    &recs,
                );
                append(
                    &mut b,
                    header(b"smuggled", EntryType::Regular, 8, 0o644),
                    &[0u8; 2048],
                );
                b.into_inner().unwrap()
            })],
            ApplyOptions::default(),
            Err("PAX size disagrees"),
        ),
        (
            "E37 PAX size with zero ustar size is honoured",
            vec![Raw({
                let recs = pax_record("size", b"5");
                let mut b = tar::Builder::new(Vec::new());
                append(
                    &mut b,
                    header(b"PaxHeader", EntryType::XHeader, recs.len() as u64, 0o644),
                    &recs,
                );
                let h = header(b"f", EntryType::Regular, 0, 0o644);
                let mut h2 = h.clone();
                h2.set_cksum();
                b.get_mut().extend_from_slice(h2.as_bytes());
                let mut data = b"hello".to_vec();
                data.resize(512, 0);
                b.get_mut().extend_from_slice(&data);
                b.into_inner().unwrap()
            })],
            ApplyOptions::default(),
            Ok(&[X::File("f", b"hello")]),
        ),
        (
            "E37 duplicate PAX key",
            vec![pax(&[("path", b"a"), ("path", b"b")], F("x", b""))],
            ApplyOptions::default(),
            Err("duplicate PAX record"),
        ),
        (
            "E37 bad PAX uid",
            vec![pax(&[("uid", b"12x")], F("x", b""))],
            ApplyOptions::default(),
            Err("invalid PAX uid"),
        ),
        (
            "E39 GNU sparse type",
            vec![Ty("sparse", b'S', 0)],
            ApplyOptions::default(),
            Err(""),
        ),
        (
            "E39 PAX GNU.sparse",
            vec![pax(&[("GNU.sparse.name", b"other")], F("x", b""))],
            ApplyOptions::default(),
            Err("sparse"),
        ),
        (
            "E43 max_entries",
            vec![F("a", b""), F("b", b""), F("c", b""), F("d", b"")],
            ApplyOptions {
                max_entries: 3,
                ..ApplyOptions::default()
            },
            Err("more than 3 entries"),
        ),
        (
            "E40 max_bytes",
            vec![F("a", b"12345"), F("b", b"678901")],
            ApplyOptions {
                max_bytes: 10,
                ..ApplyOptions::default()
            },
            Err("more than 10 bytes of files (rule max-bytes)"),
        ),
        (
            "max_bytes exact is fine",
            vec![F("a", b"12345"), F("b", b"67890")],
            ApplyOptions {
                max_bytes: 10,
                ..ApplyOptions::default()
            },
            Ok(&[X::Stats(|s| s.bytes == 10 && s.files == 2)]),
        ),
        (
            "max_path_len",
            vec![F("abcdefghijk", b"")],
            ApplyOptions {
                max_path_len: 10,
                ..ApplyOptions::default()
            },
            Err("longer than 10 bytes"),
        ),
        (
            "link target length",
            vec![L("l", "abcdefghijk")],
            ApplyOptions {
                max_path_len: 10,
                ..ApplyOptions::default()
            },
            Err("link target is longer"),
        ),
    ];
    for (n, layer, opts, want) in cases {
        check_opts(n, &[], &layer, &opts, want);
    }
}

#[test]
fn g_special_and_metadata() {
    let allow = ApplyOptions {
        device_nodes: DevicePolicy::Allow,
        ..ApplyOptions::default()
    };
    let skip = ApplyOptions {
        device_nodes: DevicePolicy::Skip,
        ..ApplyOptions::default()
    };
    let dflt = ApplyOptions::default();
    let mut cap2 = vec![0u8; 20];
    cap2[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    cap2[4] = 0x00;
    cap2[5] = 0x04; // CAP_NET_BIND_SERVICE (bit 10)
    let cap2: &'static [u8] = Box::leak(cap2.into_boxed_slice());
    let mut cap3 = vec![0u8; 24];
    cap3[..4].copy_from_slice(&0x0300_0001u32.to_le_bytes());
    cap3[20] = 0xe8;
    cap3[21] = 0x03;
    let cases: Vec<(&str, Vec<T>, &ApplyOptions, Want)> = vec![
        (
            "G67 char device rejected",
            vec![Chr("dev/null", 1, 3)],
            &dflt,
            Err("device nodes"),
        ),
        (
            "G67 block device rejected",
            vec![Blk("dev/sda", 8, 0)],
            &dflt,
            Err("device nodes"),
        ),
        (
            "G67 device skipped",
            vec![Chr("dev/null", 1, 3), Blk("dev/sda", 8, 0)],
            &skip,
            Ok(&[
                X::Gone("dev/null"),
                X::Gone("dev/sda"),
                X::Skipped("device node skipped"),
            ]),
        ),
        (
            "G67 device allowed",
            vec![Chr("dev/null", 1, 3), Chr("dev/zero0", 0, 0)],
            &allow,
            Ok(&[
                X::Chr("dev/null", 1, 3),
                X::Mode("dev/null", 0o600),
                X::Chr("dev/zero0", 0, 0),
            ]),
        ),
        (
            "G68 fifo",
            vec![Fifo("run/fifo", 0o4620)],
            &dflt,
            Ok(&[X::Fifo("run/fifo"), X::Mode("run/fifo", 0o4620)]),
        ),
        (
            "G69 unknown type Z",
            vec![Ty("z", b'Z', 0)],
            &dflt,
            Err("unsupported entry type 'Z' (rule entry-types)"),
        ),
        (
            "G69 unknown type 9 with data",
            vec![Ty("z", b'9', 100)],
            &dflt,
            Err("unsupported entry type '9' (rule entry-types)"),
        ),
        (
            "G69 contiguous file is regular",
            vec![Ty("c", b'7', 3)],
            &dflt,
            Ok(&[X::File("c", &[7, 7, 7])]),
        ),
        (
            "G69 PAX global header ignored",
            vec![
                Raw({
                    let recs = pax_record("comment", b"git");
                    let mut b = tar::Builder::new(Vec::new());
                    append(
                        &mut b,
                        header(
                            b"pax_global_header",
                            EntryType::XGlobalHeader,
                            recs.len() as u64,
                            0o644,
                        ),
                        &recs,
                    );
                    b.into_inner().unwrap()[..1024].to_vec()
                }),
                F("after", b"a"),
            ],
            &dflt,
            Ok(&[X::Children("", &["after"]), X::Skipped("global")]),
        ),
        (
            "G70 setuid kept after chown",
            vec![
                Fm("bin/su", b"elf", 0o4755, 1000, 1000),
                Fm("bin/sg", b"elf", 0o2711, 0, 42),
            ],
            &dflt,
            Ok(&[
                X::Mode("bin/su", 0o4755),
                X::Owner("bin/su", 1000, 1000),
                X::Mode("bin/sg", 0o2711),
                X::Owner("bin/sg", 0, 42),
            ]),
        ),
        (
            "G70 sticky dir",
            vec![Dm("tmp", 0o1777, 77)],
            &dflt,
            Ok(&[X::Mode("tmp", 0o1777), X::Mtime("tmp", 77)]),
        ),
        (
            "G71 user xattr and v2 capability applied",
            vec![
                pax(
                    &[
                        ("SCHILY.xattr.user.k", b"v"),
                        ("SCHILY.xattr.security.capability", cap2),
                    ],
                    F("bin/ping", b"p"),
                ),
                pax(&[("SCHILY.xattr.user.d", b"dv")], D("d")),
            ],
            &dflt,
            Ok(Box::leak(Box::new([
                X::Xattr("bin/ping", "user.k", b"v"),
                X::Xattr("bin/ping", "security.capability", cap2),
                X::Xattr("d", "user.d", b"dv"),
            ]))),
        ),
        (
            "G71 v3 capability with rootid rejected",
            vec![pax(
                &[("SCHILY.xattr.security.capability", &cap3)],
                F("x", b""),
            )],
            &dflt,
            Err("security.capability"),
        ),
        (
            "G35/72 trusted.overlay.opaque stripped",
            vec![pax(
                &[("SCHILY.xattr.trusted.overlay.opaque", b"y")],
                D("d"),
            )],
            &dflt,
            Ok(&[
                X::Dir("d"),
                X::NoXattr("d", "trusted.overlay.opaque"),
                X::Skipped("xattrs strip xattr `trusted.overlay.opaque` stripped"),
            ]),
        ),
        (
            "G72 user.overlay.* stripped",
            vec![pax(
                &[("SCHILY.xattr.user.overlay.redirect", b"/x")],
                D("d"),
            )],
            &dflt,
            Ok(&[
                X::NoXattr("d", "user.overlay.redirect"),
                X::Skipped("xattrs strip xattr `user.overlay.redirect` stripped"),
            ]),
        ),
        (
            "G72 other namespaces skipped",
            vec![pax(
                &[
                    ("SCHILY.xattr.security.selinux", b"ctx"),
                    ("SCHILY.xattr.system.nfs4_acl", b"a"),
                ],
                F("x", b""),
            )],
            &dflt,
            Ok(&[
                X::NoXattr("x", "security.selinux"),
                X::Skipped("security.selinux"),
            ]),
        ),
        (
            "G72 empty xattr name",
            vec![pax(&[("SCHILY.xattr.", b"v")], F("x", b""))],
            &dflt,
            Err("invalid xattr name"),
        ),
        (
            "G72 oversize xattr value",
            vec![pax(
                &[("SCHILY.xattr.user.big", &vec![b'v'; 70_000])],
                F("x", b""),
            )],
            &dflt,
            Err("larger than 64 KiB"),
        ),
        (
            "G72 xattr on symlink skipped",
            vec![pax(&[("SCHILY.xattr.user.k", b"v")], L("l", "t"))],
            &dflt,
            Ok(&[X::Sym("l", "t"), X::Skipped("on a symlink")]),
        ),
        (
            "G74 PAX mtime",
            vec![
                pax(&[("mtime", b"1234567890.5")], F("m", b"")),
                pax(&[("mtime", b"-5")], F("n", b"")),
            ],
            &dflt,
            Ok(&[X::Mtime("m", 1234567890), X::Mtime("n", 0)]),
        ),
        (
            "G74 huge mtimes clamped",
            vec![
                Raw({
                    let mut b = tar::Builder::new(Vec::new());
                    let mut h = header(b"far", EntryType::Regular, 0, 0o644);
                    h.set_mtime(u64::MAX);
                    append(&mut b, h, &[]);
                    b.into_inner().unwrap()[..512].to_vec()
                }),
                pax(&[("mtime", b"99999999999999999999.1")], D("fard")),
            ],
            &dflt,
            Ok(&[X::Stats(|s| s.files == 1 && s.dirs == 1)]),
        ),
        (
            "G75 uid 2^32-1 rejected",
            vec![Fm("x", b"", 0o644, u32::MAX as u64, 0)],
            &dflt,
            Err("uid 4294967295 is out of range"),
        ),
        (
            "G75 PAX uid 2^32 rejected",
            vec![pax(&[("uid", b"4294967296")], F("x", b""))],
            &dflt,
            Err("out of range"),
        ),
        (
            "G75 PAX uid 4294967294 accepted",
            vec![pax(&[("uid", b"4294967294")], F("x", b""))],
            &dflt,
            Ok(&[X::Owner("x", 4294967294, 0)]),
        ),
        (
            "symlink owner and mtime without following",
            vec![Raw({
                let mut b = tar::Builder::new(Vec::new());
                let mut h = with_link(header(b"l", EntryType::Symlink, 0, 0o777), "/etc/passwd");
                h.set_uid(1234);
                h.set_gid(5678);
                h.set_mtime(42);
                append(&mut b, h, &[]);
                b.into_inner().unwrap()[..512].to_vec()
            })],
            &dflt,
            Ok(&[X::Owner("l", 1234, 5678), X::Mtime("l", 42)]),
        ),
        (
            "directory mtimes survive later children",
            vec![
                Dm("a", 0o755, 100),
                Dm("a/b", 0o700, 200),
                F("a/b/c", b""),
                F("a/x", b""),
                F("a/b/.wh.gone", b""),
            ],
            &dflt,
            Ok(&[
                X::Mtime("a", 100),
                X::Mtime("a/b", 200),
                X::Mode("a/b", 0o700),
            ]),
        ),
        (
            "dir onto existing dir keeps children, updates metadata",
            vec![F("a/old", b"o"), Dm("a", 0o711, 9)],
            &dflt,
            Ok(&[
                X::File("a/old", b"o"),
                X::Mode("a", 0o711),
                X::Mtime("a", 9),
            ]),
        ),
        (
            "file mode and mtime",
            vec![Fm("f", b"x", 0o640, 3, 4)],
            &dflt,
            Ok(&[
                X::Mode("f", 0o640),
                X::Owner("f", 3, 4),
                X::Mtime("f", 1_000_000_000),
            ]),
        ),
    ];
    for (n, layer, opts, want) in cases {
        check_opts(n, &[], &layer, opts, want);
    }
}

#[test]
fn gnu_long_names_and_links() {
    let long_dir = "l".repeat(150);
    let long_path = format!("{long_dir}/file");
    let long_target = format!("/{}/target", "t".repeat(150));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, &long_path, &b"long"[..]).unwrap();
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, "sym", &long_target).unwrap();
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, format!("{long_dir}/hard"), &long_path)
        .unwrap();
    let bytes = b.into_inner().unwrap();
    let sb = Sandbox::new();
    let s = sb.apply(&bytes, &ApplyOptions::default()).unwrap();
    assert_eq!((s.files, s.symlinks, s.hardlinks), (1, 1, 1));
    assert_eq!(fs::read(sb.p(&long_path)).unwrap(), b"long");
    assert_eq!(fs::read_link(sb.p("sym")).unwrap(), Path::new(&long_target));
    let ino = |p: &str| fs::metadata(sb.p(p)).unwrap().ino();
    assert_eq!(ino(&long_path), ino(&format!("{long_dir}/hard")));
}

/// A GNU long name of more than 1 MiB is refused before it is buffered.
#[test]
fn huge_gnu_long_name_refused() {
    let mut bytes = Vec::new();
    let name = vec![b'a'; 3 << 20];
    let mut g = Header::new_gnu();
    g.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    g.set_entry_type(EntryType::GNULongName);
    g.set_size(name.len() as u64);
    g.set_mode(0o644);
    g.set_uid(0);
    g.set_gid(0);
    g.set_mtime(0);
    g.set_cksum();
    bytes.extend_from_slice(g.as_bytes());
    bytes.extend_from_slice(&name);
    bytes.extend_from_slice(&[0u8; 1024]);
    let sb = Sandbox::new();
    let e = sb.apply(&bytes, &ApplyOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("over the 1048576-byte limit (rule max-ext-header-bytes)"),
        "{e}"
    );
}

#[test]
fn stats_counts() {
    let sb = Sandbox::new();
    let bytes = tar_bytes(&[
        D("d"),
        F("d/f", b"abc"),
        L("d/l", "f"),
        H("d/h", "d/f"),
        F("d/.wh.none", b""),
        F("e/.wh..wh..opq", b""),
    ]);
    let s = sb.apply(&bytes, &ApplyOptions::default()).unwrap();
    assert_eq!(
        (
            s.entries,
            s.dirs,
            s.files,
            s.symlinks,
            s.hardlinks,
            s.whiteouts,
            s.opaque_dirs,
            s.bytes
        ),
        (6, 1, 1, 1, 1, 1, 1, 3)
    );
}

#[test]
fn decisions_are_capped() {
    let sb = Sandbox::new();
    let layer: Vec<T> = (0..DECISIONS_CAP + 300)
        .map(|_| Dm(".", 0o755, 0))
        .collect();
    let s = sb
        .apply(&tar_bytes(&layer), &ApplyOptions::default())
        .unwrap();
    assert_eq!(s.decisions.len(), DECISIONS_CAP);
    assert_eq!(s.decisions_dropped, vec![("paths".to_string(), 300)]);
}

/// An xattr too big for the filesystem (ext4 keeps a file's xattrs in one
/// 4 KiB block and answers ENOSPC) is the entry's fault: an input error,
/// not "No space left on device" retried.
#[test]
fn an_xattr_too_big_for_the_filesystem_blames_the_entry() {
    let big = vec![b'x'; 60_000];
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    let bytes = tar_bytes(&[pax(&[("SCHILY.xattr.user.big", big)], F("f", b"data"))]);
    let sb = Sandbox::new();
    let e = sb.apply(&bytes, &ApplyOptions::default()).unwrap_err();
    match e {
        ApplyError::Input(ref m) => assert!(
            m.contains("xattr `user.big` (60000 bytes) does not fit this filesystem"),
            "{m}"
        ),
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn stream_read_error_is_io() {
    struct Failing(Vec<u8>, usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0.len() - self.1).min(700);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }
    let mut bytes = tar_bytes(&[F("a", &[1u8; 5000])]);
    bytes.truncate(2000);
    let sb = Sandbox::new();
    let e = apply_with(
        sb.root_fd().as_fd(),
        Failing(bytes, 0),
        &ApplyOptions::default().policy(),
    )
    .unwrap_err();
    match e {
        ApplyError::Io { ref source, .. } => assert_eq!(source.to_string(), "disk on fire"),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn error_messages_are_sanitized() {
    let sb = Sandbox::new();
    let e = sb
        .apply(
            &tar_bytes(&[Fb(b"evil\n\x1b[2J/../x", b"")]),
            &ApplyOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n') && !e.contains('\x1b'), "{e:?}");
    assert!(e.contains("evil??[2J/../x"), "{e:?}");
    let long = format!("{}/../x", "y".repeat(1000));
    let e = sb
        .apply(
            &tar_bytes(&[pax(&[("path", long.as_bytes())], F("x", b""))]),
            &ApplyOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{}", e.len());
}

/// A lower tree deeper than the recursion any naive remover could take,
/// removed by a whiteout (iterative removal; catalogue E44).
#[test]
fn deep_tree_removal_is_iterative() {
    let sb = Sandbox::new();
    let mut fd = sb.root_fd();
    for i in 0..900 {
        let name = if i == 0 { "deep" } else { "d" };
        rfs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)).unwrap();
        fd = rfs::openat(&fd, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        rfs::openat(
            &fd,
            "f",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
    }
    drop(fd);
    let s = sb
        .apply(&tar_bytes(&[F(".wh.deep", b"")]), &ApplyOptions::default())
        .unwrap();
    assert_eq!(s.whiteouts, 1);
    assert!(!sb.p("deep").exists());
}

// -------------------------------------------------------------- overlayfs

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Mounted {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    rustix::mount::mount(
        "overlay",
        merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        CString::new(opts).unwrap().as_c_str(),
    )
    .expect("mount overlay (needs root)");
    Mounted(merged.to_path_buf())
}

#[test]
fn overlay_whiteouts_through_merged_view() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| {
        let p = tmp.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    };
    let (lower, upper, work, merged) = (d("a"), d("b"), d("w"), d("m"));
    // The lower layer, extracted by us into a plain directory.
    let lower_fd = rfs::open(&lower, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let lower_tar = tar_bytes(&[
        F("gone", b"g"),
        F("keep", b"k"),
        F("opq/old1", b"o"),
        F("opq/sub/old2", b"o"),
        F("dir/x", b"x"),
    ]);
    apply_with(
        lower_fd.as_fd(),
        &lower_tar[..],
        &ApplyOptions::default().policy(),
    )
    .unwrap();

    let layer = tar_bytes(&[
        F(".wh.gone", b""),
        D("opq"),
        F("opq/.wh..wh..opq", b""),
        F("opq/new", b"n"),
        F("dir/.wh.x", b""),
        F("added", b"a"),
    ]);
    {
        let _m = mount_overlay(&lower, &upper, &work, &merged);
        let fd = rfs::open(&merged, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let s = apply_with(fd.as_fd(), &layer[..], &ApplyOptions::default().policy()).unwrap();
        assert_eq!((s.whiteouts, s.opaque_dirs), (2, 1));
        drop(fd);
    }
    // Upper dir: char 0/0 whiteouts where lower entries were removed.
    let is_whiteout = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        m.file_type().is_char_device() && m.rdev() == 0
    };
    assert!(is_whiteout(&upper.join("gone")));
    assert!(is_whiteout(&upper.join("dir/x")));
    assert!(is_whiteout(&upper.join("opq/old1")));
    assert!(is_whiteout(&upper.join("opq/sub")));
    assert_eq!(fs::read(upper.join("opq/new")).unwrap(), b"n");
    assert!(!upper.join(".wh.gone").exists() && !upper.join("opq/.wh..wh..opq").exists());
    // Lower untouched.
    assert_eq!(fs::read(lower.join("gone")).unwrap(), b"g");
    // Remount and look at the merged view.
    let _m = mount_overlay(&lower, &upper, &work, &merged);
    let names = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&merged), ["added", "dir", "keep", "opq"]);
    assert_eq!(names(&merged.join("opq")), ["new"]);
    assert!(names(&merged.join("dir")).is_empty());
}

/// One layer under the strict policy: what the default policy strips or
/// notes, the strict one rejects or skips, with the rule named.
#[test]
fn strict_policy() {
    let strict = Policy::from_toml(crate::core::policy::STRICT_POLICY).unwrap();
    let check = |name: &str, layer: &[T], want: Result<&[&str], &str>| {
        let sb = Sandbox::new();
        let res = apply_with(sb.root_fd().as_fd(), &tar_bytes(layer)[..], &strict);
        match (res, want) {
            (Ok(stats), Ok(lines)) => {
                let got = decision_lines(&stats);
                for l in lines {
                    assert!(
                        got.iter().any(|g| g.contains(l)),
                        "{name}: no {l:?} in {got:?}"
                    );
                }
            }
            (Err(e), Err(sub)) => assert!(e.to_string().contains(sub), "{name}: {e}"),
            (r, w) => panic!("{name}: got {r:?}, want {w:?}"),
        }
    };
    check(
        "overlay xattr",
        &[pax(
            &[("SCHILY.xattr.trusted.overlay.opaque", b"y")],
            D("d"),
        )],
        Err("(rule xattrs)"),
    );
    check(
        "file capability",
        &[pax(
            &[(
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            )],
            F("ping", b"x"),
        )],
        Err("(rule xattrs)"),
    );
    check(
        "duplicate",
        &[F("a", b"1"), F("a", b"2")],
        Err("(rule duplicates)"),
    );
    check(
        "device",
        &[Chr("dev/null", 1, 3)],
        Err("(rule device-nodes)"),
    );
    check(
        "fifo skipped",
        &[Fifo("run/initctl", 0o600)],
        Ok(&["fifos skip"]),
    );
    check(
        "setuid stripped",
        &[Fm("bin/su", b"x", 0o4755, 0, 0)],
        Ok(&["`bin/su`: setid strip"]),
    );
    check(
        "uid over 65535",
        &[Fm("a", b"x", 0o644, 70000, 0)],
        Err("(rule max-id)"),
    );
}

/// The real tar check with a recording fake of the inspect steps behind
/// it: it wants the bytes of every `*.key` file, records them, and skips
/// those that hold `PRIVATE`.
struct Reading<'a> {
    check: &'a mut dyn view::TarCheck,
    read: Vec<(String, Vec<u8>)>,
    /// The layer root: no file is there before it is judged.
    root: PathBuf,
}

impl Reading<'_> {
    fn mark(mut p: view::Progress) -> view::Progress {
        for e in &mut p.entries {
            e.contents_wanted = e.path.ends_with(b".key");
        }
        p
    }
}

impl view::TarCheck for Reading<'_> {
    fn feed(&mut self, offset: u64, bytes: &[u8]) -> Result<view::Progress, view::CheckError> {
        self.check.feed(offset, bytes).map(Reading::mark)
    }

    fn finish(&mut self, total: u64) -> Result<view::Progress, view::CheckError> {
        self.check.finish(total).map(Reading::mark)
    }

    fn contents(
        &mut self,
        entry: &view::Entry,
        bytes: &[u8],
    ) -> Result<view::Contents, view::CheckError> {
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        assert!(
            fs::symlink_metadata(self.root.join(&path)).is_err(),
            "`{path}` was written before it was judged"
        );
        self.read.push((path.clone(), bytes.to_vec()));
        let private = bytes.windows(7).any(|w| w == b"PRIVATE");
        Ok(view::Contents {
            keep: !private,
            decisions: if private {
                vec![view::Decision {
                    path,
                    rule: "no-keys".into(),
                    action: "skip".into(),
                    detail: "a private key".into(),
                }]
            } else {
                Vec::new()
            },
        })
    }
}

/// Files whose bytes the check wants are held until it has judged them
/// (one straddling the stream's 1 MiB chunks among them), then written
/// whole with their metadata, or not at all; the rest are written as
/// they pass.
#[test]
fn files_judged_by_their_bytes_are_written_whole_or_not_at_all() {
    let filler = vec![b'f'; (1 << 20) - 2660];
    let filler: &'static [u8] = Box::leak(filler.into_boxed_slice());
    let mut straddling = b"-----BEGIN PRIVATE KEY-----\n".to_vec();
    straddling.resize(3000, b'k');
    let straddling: &'static [u8] = Box::leak(straddling.into_boxed_slice());
    let bytes = tar_bytes(&[
        F("filler", filler),
        F("srv/a.key", straddling),
        Fm("srv/b.key", b"public stuff\n", 0o600, 7, 8),
        F("srv/empty.key", b""),
        F("srv/c.txt", b"PRIVATE but not read\n"),
    ]);
    let at = bytes
        .windows(16)
        .position(|w| w == b"-----BEGIN PRIVA")
        .unwrap();
    assert!(at < 1 << 20 && at + 3000 > 1 << 20, "{at}: it straddles");
    let sb = Sandbox::new();
    let policy = ApplyOptions::default().policy();
    let mut inner = crate::wasm::test_steps()
        .tar_check(view::Mode::Layer, &policy)
        .unwrap();
    let mut check = Reading {
        check: &mut inner,
        read: Vec::new(),
        root: sb.root.clone(),
    };
    let stats = apply_layer(sb.root_fd().as_fd(), &bytes[..], &mut check).unwrap();
    let read: Vec<(&str, usize)> = check
        .read
        .iter()
        .map(|(p, b)| (p.as_str(), b.len()))
        .collect();
    assert_eq!(
        read,
        [("srv/a.key", 3000), ("srv/b.key", 13), ("srv/empty.key", 0)]
    );
    assert_eq!(check.read[0].1, straddling);
    assert!(!sb.p("srv/a.key").exists());
    assert_eq!(fs::read(sb.p("srv/b.key")).unwrap(), b"public stuff\n");
    let m = fs::metadata(sb.p("srv/b.key")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 7, 8));
    assert_eq!(fs::read(sb.p("srv/empty.key")).unwrap(), b"");
    assert_eq!(
        fs::read(sb.p("srv/c.txt")).unwrap(),
        b"PRIVATE but not read\n"
    );
    assert_eq!(fs::read(sb.p("filler")).unwrap().len(), filler.len());
    assert_eq!(
        decision_lines(&stats),
        ["`srv/a.key`: no-keys skip a private key"]
    );
    assert_eq!(stats.files, 4);
}
