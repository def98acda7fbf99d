use super::*;
use std::collections::BTreeMap;

/// What LXC's distrobuilder writes (with a `templates` block and an
/// `expiry_date`, both skipped).
const GOOD: &str = "architecture: x86_64
creation_date: 1700000000
expiry_date: 1702592000
properties:
  architecture: x86_64
  description: Alpinelinux 3.18 x86_64 (20231115_13:00)
  name: alpinelinux-3.18-x86_64-default-20231115_13:00
  os: alpinelinux
  release: \"3.18\"
  variant: default
templates:
  /etc/hostname:
    when:
    - create
    - copy
    create_only: false
    template: hostname.tpl
    properties: {}
";

/// A unit in memory: member name -> bytes.
#[derive(Clone, Default)]
struct Unit {
    files: BTreeMap<String, Vec<u8>>,
}

impl Unit {
    fn with(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.insert(name.to_string(), bytes.into());
        self
    }
    fn members(&self) -> Vec<Member> {
        self.files
            .iter()
            .map(|(name, b)| Member {
                name: name.clone(),
                size: b.len() as u64,
            })
            .collect()
    }
    fn run(&self, unit: UnitKind, opts: &ManifestOptions) -> Result<Option<ImageLayout>, String> {
        self.run_members(unit, &self.members(), opts)
    }
    fn run_members(
        &self,
        unit: UnitKind,
        members: &[Member],
        opts: &ManifestOptions,
    ) -> Result<Option<ImageLayout>, String> {
        let mut read = |name: &str| {
            self.files
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no member {name}"))
        };
        let got = parse(unit, members, opts, &mut read);
        if let Err(e) = &got {
            assert!(!e.chars().any(char::is_control), "{e:?}");
            assert!(e.chars().count() <= guest_text::MAX_LINE_CHARS + 3, "{e:?}");
        }
        got
    }
}

/// An image: metadata.yaml with `metadata`, and members `rootfs`.
fn image(metadata: &str, rootfs: &[&str]) -> Unit {
    rootfs
        .iter()
        .fold(Unit::default().with(METADATA, metadata), |u, name| {
            u.with(name, vec![0u8; 10])
        })
}

fn arm64() -> ManifestOptions {
    ManifestOptions {
        architecture: "arm64".into(),
        ..ManifestOptions::default()
    }
}

/// What a check expects.
#[derive(Debug)]
enum Want<'a> {
    /// An image of this one layer member and media.
    Layer(&'a str, LayerMedia),
    /// Not this component's format.
    NotMine,
    /// An error containing this.
    Fails(&'a str),
}

fn check(unit: &Unit, kind: UnitKind, opts: &ManifestOptions, want: Want<'_>) {
    match (unit.run(kind, opts), &want) {
        (Ok(Some(l)), Want::Layer(member, media)) => {
            assert_eq!(l.format, "lxc-rootfs");
            assert_eq!(l.layers.len(), 1, "{l:?}");
            assert_eq!(l.layers[0].member, *member);
            assert_eq!(l.layers[0].media, *media);
            assert_eq!(
                (&l.layers[0].digest, &l.layers[0].diff_id, l.layers[0].size),
                (&None, &None, None)
            );
            assert_eq!(l.config_digest, None);
            let config = l.config.expect("a runtime config");
            assert_eq!(config.cmd, ["/sbin/init"]);
            assert_eq!(config.env, [INIT_PATH]);
            assert_eq!(
                (config.working_dir.as_str(), config.user.as_str()),
                ("/", "")
            );
            assert!(config.entrypoint.is_empty());
        }
        (Ok(None), Want::NotMine) => {}
        (Err(e), Want::Fails(sub)) => assert!(e.contains(sub), "error {e:?} lacks {sub:?}"),
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

#[test]
fn images() {
    let p = UnitKind::Prefix;
    let amd = ManifestOptions::default();
    use LayerMedia::{Gzip, Tar, Zstd};
    use Want::{Fails, Layer, NotMine};
    let arch = |a: &str| GOOD.replacen("x86_64", a, 1);
    let cases: Vec<(Unit, ManifestOptions, Want)> = vec![
        // Good.
        (
            image(GOOD, &["rootfs.tar"]),
            amd.clone(),
            Layer("rootfs.tar", Tar),
        ),
        (
            image(GOOD, &["rootfs.tar.gz"]),
            amd.clone(),
            Layer("rootfs.tar.gz", Gzip),
        ),
        (
            image(GOOD, &["rootfs.tar.zst"]),
            amd.clone(),
            Layer("rootfs.tar.zst", Zstd),
        ),
        (
            image(&arch("amd64"), &["rootfs.tar"]),
            amd.clone(),
            Layer("rootfs.tar", Tar),
        ),
        (
            image(&arch("aarch64"), &["rootfs.tar"]),
            arm64(),
            Layer("rootfs.tar", Tar),
        ),
        (
            image(&arch("arm64"), &["rootfs.tar"]),
            arm64(),
            Layer("rootfs.tar", Tar),
        ),
        (
            image("architecture: x86_64\n", &["rootfs.tar"]),
            amd.clone(),
            Layer("rootfs.tar", Tar),
        ),
        // Wrong architecture or os.
        (
            image(&arch("aarch64"), &["rootfs.tar"]),
            amd.clone(),
            Fails("metadata.yaml: image is for `aarch64`, not `amd64`"),
        ),
        (
            image(GOOD, &["rootfs.tar"]),
            arm64(),
            Fails("image is for `x86_64`, not `arm64`"),
        ),
        (
            image(&arch("riscv64"), &["rootfs.tar"]),
            amd.clone(),
            Fails("image is for `riscv64`, not `amd64`"),
        ),
        (
            image(&arch("X86_64"), &["rootfs.tar"]),
            amd.clone(),
            Fails("image is for `X86_64`"),
        ),
        (
            image(GOOD, &["rootfs.tar"]),
            ManifestOptions {
                os: "windows".into(),
                ..ManifestOptions::default()
            },
            Fails("image is for linux, not `windows`"),
        ),
        // Members.
        (
            image(GOOD, &[]),
            amd.clone(),
            Fails("metadata.yaml but no root filesystem"),
        ),
        (
            image(GOOD, &["rootfs.tar", "rootfs.tar.gz"]),
            amd.clone(),
            Fails("two root filesystems, `rootfs.tar` and `rootfs.tar.gz`"),
        ),
        (
            image(GOOD, &["rootfs.squashfs"]),
            amd.clone(),
            Fails("member `rootfs.squashfs` is not a supported root filesystem"),
        ),
        (
            image(GOOD, &["rootfs.tar.xz"]),
            amd.clone(),
            Fails("`rootfs.tar.xz` is not a supported"),
        ),
        (
            image(GOOD, &["rootfs.tar", "templates/hostname.tpl"]),
            amd.clone(),
            Fails("member `templates/hostname.tpl` is not part of an lxc-rootfs image"),
        ),
        (
            image(GOOD, &["rootfs.tar", "1.tar"]),
            amd.clone(),
            Fails("member `1.tar` is not part"),
        ),
        (
            image(GOOD, &["./rootfs.tar"]),
            amd.clone(),
            Fails("member `./rootfs.tar` is not part"),
        ),
        // Not this format.
        (
            image(GOOD, &["rootfs.tar"]),
            amd.clone(),
            Layer("rootfs.tar", Tar),
        ),
        (
            Unit::default().with("rootfs.tar", "x"),
            amd.clone(),
            NotMine,
        ),
        (
            Unit::default().with("1.tar", "x").with("2.tar", "y"),
            amd.clone(),
            NotMine,
        ),
        (
            Unit::default()
                .with("Metadata.yaml", GOOD)
                .with("rootfs.tar", "x"),
            amd.clone(),
            NotMine,
        ),
        (Unit::default(), amd.clone(), NotMine),
        // Malformed metadata.
        (
            image("architecture: [x86_64]\n", &["rootfs.tar"]),
            amd.clone(),
            Fails("metadata.yaml: line 1: `architecture` is not a plain string"),
        ),
        (
            image("architecture x86_64\n", &["rootfs.tar"]),
            amd.clone(),
            Fails("line 1: not a `key: value` line"),
        ),
        (
            image("creation_date: 1\n", &["rootfs.tar"]),
            amd.clone(),
            Fails("metadata.yaml: no `architecture`"),
        ),
        (
            image("\u{0}", &["rootfs.tar"]),
            amd.clone(),
            Fails("line 1: control character"),
        ),
        (
            image(&format!("{GOOD}architecture: x86_64\n"), &["rootfs.tar"]),
            amd.clone(),
            Fails("line 19: duplicate key `architecture`"),
        ),
    ];
    for (unit, opts, want) in cases {
        check(&unit, p, &opts, want);
    }
    // An archive or a registry image is never this format.
    for kind in [UnitKind::Archive, UnitKind::Registry] {
        check(&image(GOOD, &["rootfs.tar"]), kind, &amd, NotMine);
    }
}

#[test]
fn reading_metadata() {
    let p = UnitKind::Prefix;
    let opts = ManifestOptions::default();
    let u = image(GOOD, &["rootfs.tar"]);
    // Too large: refused before it is read.
    let big = format!("{GOOD}#{}\n", "x".repeat(MAX_METADATA_BYTES as usize));
    let mut read = |_: &str| -> Result<Vec<u8>, String> { panic!("read") };
    let members = [
        Member {
            name: METADATA.into(),
            size: big.len() as u64,
        },
        Member {
            name: "rootfs.tar".into(),
            size: 1,
        },
    ];
    let e = parse(p, &members, &opts, &mut read).unwrap_err();
    assert!(
        e.contains(&format!(
            "metadata.yaml is {} bytes (at most 65536)",
            big.len()
        )),
        "{e}"
    );
    // Exactly the cap is fine.
    let pad = MAX_METADATA_BYTES as usize - GOOD.len() - 2;
    let at_cap = format!("{GOOD}#{}\n", "x".repeat(pad));
    assert_eq!(at_cap.len() as u64, MAX_METADATA_BYTES);
    check(
        &image(&at_cap, &["rootfs.tar"]),
        p,
        &opts,
        Want::Layer("rootfs.tar", LayerMedia::Tar),
    );
    // Listed with one size, read with another.
    let mut members = u.members();
    members[0].size += 1;
    let e = u.run_members(p, &members, &opts).unwrap_err();
    assert!(
        e.contains(&format!(
            "read {} bytes but the member is listed as {} bytes",
            GOOD.len(),
            GOOD.len() + 1
        )),
        "{e}"
    );
    // The reader's error, on one line.
    let mut read = |_: &str| -> Result<Vec<u8>, String> { Err("gone\nnow".into()) };
    let e = parse(p, &u.members(), &opts, &mut read).unwrap_err();
    assert_eq!(e, "metadata.yaml: cannot read: gone?now");
    // Not UTF-8.
    check(
        &image(GOOD, &["rootfs.tar"]).with(METADATA, b"architecture: \xff\n".to_vec()),
        p,
        &opts,
        Want::Fails("metadata.yaml: not UTF-8"),
    );
    // Listed twice.
    let mut members = u.members();
    members.push(members[0].clone());
    let e = u.run_members(p, &members, &opts).unwrap_err();
    assert!(e.contains("metadata.yaml is listed twice"), "{e}");
    let mut members = u.members();
    members.push(members[1].clone());
    let e = u.run_members(p, &members, &opts).unwrap_err();
    assert!(e.contains("`rootfs.tar` is listed twice"), "{e}");
}

#[test]
fn metadata_subset() {
    let m = parse_metadata(GOOD).unwrap();
    assert_eq!(
        m,
        Metadata {
            architecture: "x86_64".into(),
            creation_date: Some(1_700_000_000),
            description: Some("Alpinelinux 3.18 x86_64 (20231115_13:00)".into()),
            os: Some("alpinelinux".into()),
            release: Some("3.18".into()),
        }
    );
    let ok: &[(&str, Metadata)] = &[
        (
            "---\r\n# made by hand\r\narchitecture: 'x86''64' # odd\r\n\r\nproperties:\r\n    os: \"a\\\"b\\u00e9\\/\"\r\n",
            Metadata {
                architecture: "x86'64".into(),
                os: Some("a\"bé/".into()),
                ..Metadata::default()
            },
        ),
        (
            "\u{feff}architecture: aarch64\ncreation_date: -5 # before 1970\nproperties:\nfoo:\n  - bar: [1, 2]\n\t\n",
            Metadata {
                architecture: "aarch64".into(),
                creation_date: Some(-5),
                ..Metadata::default()
            },
        ),
        (
            "properties:\n  name: x\n    nested: under an unknown key\n  release: jammy\narchitecture: amd64",
            Metadata {
                architecture: "amd64".into(),
                release: Some("jammy".into()),
                ..Metadata::default()
            },
        ),
    ];
    for (text, want) in ok {
        assert_eq!(parse_metadata(text).as_ref(), Ok(want), "{text:?}");
    }
    let bad: &[(&str, &str)] = &[
        ("", "no `architecture`"),
        ("architecture:\n", "line 1: `architecture` has no value"),
        ("architecture: ''\n", "`architecture` is empty"),
        (
            "architecture: x86_64\n  extra: 1\n",
            "line 2: unexpected indentation",
        ),
        ("\tarchitecture: x86_64\n", "line 1: tab in indentation"),
        ("architecture:\tx86_64\n", "line 1: not a `key: value` line"),
        ("architecture: x86_64\r\x0b\n", "line 1: control character"),
        (
            "architecture: x86_64\n- item\n",
            "line 2: not a `key: value` line",
        ),
        (
            "\"architecture\": x86_64\n",
            "line 1: not a `key: value` line",
        ),
        (
            "architecture: &a x86_64\n",
            "line 1: `architecture` is not a plain string",
        ),
        ("architecture: *a\n", "is not a plain string"),
        ("architecture: |\n  x86_64\n", "is not a plain string"),
        ("architecture: >\n", "is not a plain string"),
        ("architecture: {a: b}\n", "is not a plain string"),
        ("architecture: a: b\n", "is not a plain string"),
        ("architecture: - a\n", "is not a plain string"),
        ("architecture: !!str x\n", "is not a plain string"),
        ("architecture: \"x86_64\n", "has an unterminated string"),
        ("architecture: 'x86_64\n", "has an unterminated string"),
        (
            "architecture: \"x\" y\n",
            "has text after its closing quote",
        ),
        ("architecture: 'x' y\n", "has text after its closing quote"),
        ("architecture: \"\\x41\"\n", "has an unsupported escape"),
        ("architecture: \"\\u12\"\n", "has a bad \\u escape"),
        ("architecture: \"\\ud800\"\n", "has a bad \\u escape"),
        ("architecture: \"a\\u0000\"\n", "contains NUL"),
        (
            "architecture: a\narchitecture: b\n",
            "line 2: duplicate key `architecture`",
        ),
        (
            "architecture: a\nfoo: 1\nfoo: 2\n",
            "line 3: duplicate key `foo`",
        ),
        (
            "architecture: a\ncreation_date: \"1\"\n",
            "line 2: `creation_date` is not an integer: `\"1\"`",
        ),
        ("architecture: a\ncreation_date: 1.5\n", "is not an integer"),
        (
            "architecture: a\ncreation_date: 99999999999999999999\n",
            "`creation_date` is out of range",
        ),
        ("architecture: a\ncreation_date:\n", "is not an integer: ``"),
        (
            "architecture: a\nproperties: {}\n",
            "line 2: `properties` must be a block mapping",
        ),
        (
            "architecture: a\nproperties:\n  os: x\n  os: y\n",
            "line 4: duplicate key `os` in `properties`",
        ),
        (
            "architecture: a\nproperties:\n    os: x\n  release: y\n",
            "line 4: unexpected indentation",
        ),
        (
            "architecture: a\nproperties:\n  os: x\n    deeper: y\n",
            "line 4: unexpected indentation",
        ),
        (
            "architecture: a\nproperties:\n  os:\n    - x\n",
            "line 3: `os` has no value",
        ),
        (
            "architecture: a\nproperties:\n  - os: x\n",
            "line 3: not a `key: value` line",
        ),
        (
            "architecture: a\nproperties:\n  description: [x]\n",
            "`description` is not a plain string",
        ),
        ("...\narchitecture: a\n", "line 1: not a `key: value` line"),
        ("architecture: a\n---\n", "line 2: not a `key: value` line"),
    ];
    for (text, want) in bad {
        let e = parse_metadata(text).unwrap_err();
        assert!(e.contains(want), "{text:?}: error {e:?} lacks {want:?}");
    }
}

#[test]
fn architecture_names() {
    for (lxc, go) in [
        ("x86_64", "amd64"),
        ("amd64", "amd64"),
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("i686", "386"),
        ("armv7l", "arm"),
        ("ppc64le", "ppc64le"),
        ("s390x", "s390x"),
        ("", ""),
    ] {
        assert_eq!(go_arch(lxc), go, "{lxc}");
    }
}
