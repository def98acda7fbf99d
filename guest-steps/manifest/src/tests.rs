use super::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

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
    fn without(mut self, name: &str) -> Self {
        self.files.remove(name);
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
    /// Parses with the default options; `none` is a test failure here.
    fn run(&self, unit: UnitKind) -> Result<ImageLayout, String> {
        self.run_members(unit, &self.members())
    }
    fn run_members(&self, unit: UnitKind, members: &[Member]) -> Result<ImageLayout, String> {
        self.run_full(unit, members, &ManifestOptions::default())
            .map(|l| l.expect("the component should know this format"))
    }
    fn run_opts(
        &self,
        unit: UnitKind,
        opts: &ManifestOptions,
    ) -> Result<Option<ImageLayout>, String> {
        self.run_full(unit, &self.members(), opts)
    }
    fn run_full(
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
            assert_one_line(e);
        }
        got
    }
}

fn assert_one_line(s: &str) {
    assert!(!s.chars().any(char::is_control), "{s:?}");
    assert!(s.chars().count() <= guest_text::MAX_LINE_CHARS + 3, "{s:?}");
}

/// Data-driven check: `Ok(n)` wants `n` layers, `Err(s)` an error containing `s`.
fn check(unit: &Unit, kind: UnitKind, expected: Result<usize, &str>) {
    check_opts(unit, kind, &ManifestOptions::default(), expected);
}

/// [`check`] with options.
fn check_opts(unit: &Unit, kind: UnitKind, opts: &ManifestOptions, expected: Result<usize, &str>) {
    match (unit.run_opts(kind, opts), expected) {
        (Ok(Some(l)), Ok(n)) => assert_eq!(l.layers.len(), n, "{l:?}"),
        (Err(e), Err(sub)) => assert!(e.contains(sub), "error {e:?} lacks {sub:?}"),
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

/// Data-driven check that the unit is not a format this component knows.
fn check_none(unit: &Unit, kind: UnitKind) {
    match unit.run_opts(kind, &ManifestOptions::default()) {
        Ok(None) => {}
        got => panic!("got {got:?}, want none"),
    }
}

fn hex(n: u64) -> String {
    format!("{n:064x}")
}

fn blob(n: u64) -> String {
    format!("blobs/sha256/{}", hex(n))
}

fn desc(media: &str, n: u64, size: usize) -> String {
    format!(
        r#"{{"mediaType":"{media}","digest":"sha256:{}","size":{size}}}"#,
        hex(n)
    )
}

/// An OCI image: layers are blobs 1..=k, config 100, manifest 200.
fn oci(layers: &[&str]) -> Unit {
    let mut u = Unit::default().with("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, media) in layers.iter().enumerate() {
        let n = i as u64 + 1;
        let bytes = vec![0u8; 10 + i];
        descs.push(desc(media, n, bytes.len()));
        diff_ids.push(format!("\"sha256:{}\"", hex(n + 1000)));
        u = u.with(&blob(n), bytes);
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        desc(OCI_CONFIG, 100, config.len()),
        descs.join(",")
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        desc(OCI_MANIFEST, 200, manifest.len())
    );
    u.with(&blob(100), config)
        .with(&blob(200), manifest)
        .with("index.json", index)
}

fn replace(u: &Unit, name: &str, from: &str, to: &str) -> Unit {
    let text = String::from_utf8(u.files[name].clone()).unwrap();
    assert!(text.contains(from), "{text} lacks {from}");
    u.clone().with(name, text.replace(from, to))
}

/// Rewrites the manifest blob (keeping index.json's size for it right).
fn edit_manifest(u: &Unit, from: &str, to: &str) -> Unit {
    let old_len = u.files[&blob(200)].len();
    let u = replace(u, &blob(200), from, to);
    let new_len = u.files[&blob(200)].len();
    replace(
        &u,
        "index.json",
        &format!("\"size\":{old_len}"),
        &format!("\"size\":{new_len}"),
    )
}

/// Rewrites the config blob (keeping the manifest's size for it right).
fn edit_config(u: &Unit, from: &str, to: &str) -> Unit {
    let old_len = u.files[&blob(100)].len();
    let u = replace(u, &blob(100), from, to);
    let new_len = u.files[&blob(100)].len();
    edit_manifest(
        &u,
        &format!("\"size\":{old_len}}}"),
        &format!("\"size\":{new_len}}}"),
    )
}

fn adhoc(names: &[&str]) -> Unit {
    names
        .iter()
        .fold(Unit::default(), |u, n| u.with(n, vec![1u8; 3]))
}

#[test]
fn ad_hoc_layers_in_numeric_order() {
    let names: Vec<String> = (1..=12).rev().map(|n| format!("{n}.tar")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let l = adhoc(&refs).run(UnitKind::Prefix).unwrap();
    assert_eq!(l.format, ImageFormat::AdHoc.name());
    let got: Vec<&str> = l.layers.iter().map(|l| l.member.as_str()).collect();
    assert_eq!(got[..3], ["1.tar", "2.tar", "3.tar"]);
    assert_eq!(got[8..], ["9.tar", "10.tar", "11.tar", "12.tar"]);
    assert!(l
        .layers
        .iter()
        .all(|l| l.media == LayerMedia::Detect && l.digest.is_none()));
}

#[test]
fn ad_hoc_rejections() {
    let p = UnitKind::Prefix;
    check(&adhoc(&["1.tar"]), p, Ok(1));
    check(
        &adhoc(&["1.tar", "2.tar", "4.tar"]),
        p,
        Err("layer 3.tar missing"),
    );
    check(&adhoc(&["2.tar"]), p, Err("layer 1.tar missing"));
    check(
        &adhoc(&["1.tar", "README"]),
        p,
        Err("`README` is not a layer"),
    );
    check(&adhoc(&["0.tar"]), p, Err("numbered from 1"));
    check(&adhoc(&["1.tar", "01.tar"]), p, Err("`01.tar`"));
    check(&adhoc(&["1.TAR"]), p, Err("`1.TAR`"));
    check(&adhoc(&["1.tar", "+1.tar"]), p, Err("`+1.tar`"));
    check(&adhoc(&["1.tar.gz"]), p, Err("`1.tar.gz`"));
    check(&adhoc(&["7.tgz"]), p, Err("`7.tgz`"));
    check(&adhoc(&["1.tar", ".tar"]), p, Err("`.tar`"));
    // No member named like a layer: not an ad-hoc image, not this
    // component's format at all.
    check_none(&adhoc(&["+1.tar"]), p);
    check_none(&adhoc(&[".tar"]), p);
    check_none(&adhoc(&["README"]), p);
    check_none(&adhoc(&["x1.tar", "tar.1"]), p);
    check_none(&adhoc(&["metadata.yaml", "rootfs.tar.gz"]), p);
    check(
        &adhoc(&["manifest.json", "1.tar"]),
        p,
        Err("`manifest.json`"),
    );
    check(
        &adhoc(&["99999999999999999999999.tar"]),
        p,
        Err("too large"),
    );
    check(
        &adhoc(&["18446744073709551615.tar"]),
        p,
        Err("layer 1.tar missing"),
    );
    check(&Unit::default(), p, Err("prefix holds no members"));
    check(&adhoc(&["oci-layout", "1.tar"]), p, Err("no `index.json`"));
    let twice = vec![
        Member {
            name: "1.tar".into(),
            size: 1,
        },
        Member {
            name: "1.tar".into(),
            size: 1,
        },
    ];
    let e = Unit::default().run_members(p, &twice).unwrap_err();
    assert!(e.contains("listed twice"), "{e}");
}

#[test]
fn oci_layout_and_archive() {
    let u = oci(&[
        GZ,
        TAR,
        ZST,
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ]);
    let l = u.run(UnitKind::Prefix).unwrap();
    assert_eq!(l.format, ImageFormat::OciLayout.name());
    assert_eq!(l.config_digest, Some(format!("sha256:{}", hex(100))));
    let media: Vec<LayerMedia> = l.layers.iter().map(|l| l.media).collect();
    assert_eq!(
        media,
        [
            LayerMedia::Gzip,
            LayerMedia::Tar,
            LayerMedia::Zstd,
            LayerMedia::Gzip
        ]
    );
    assert_eq!(l.layers[1].member, blob(2));
    assert_eq!(l.layers[1].digest, Some(format!("sha256:{}", hex(2))));
    assert_eq!(l.layers[1].diff_id, Some(format!("sha256:{}", hex(1002))));
    assert_eq!(l.layers[1].size, Some(11));
    assert_eq!(
        u.run(UnitKind::Archive).unwrap().format,
        ImageFormat::OciArchive.name()
    );
    // Members named with a leading `./`, as `tar -C dir .` writes them.
    let mut dotted = Unit::default();
    for (k, v) in &u.files {
        dotted = dotted.with(&format!("./{k}"), v.clone());
    }
    let l = dotted.run(UnitKind::Archive).unwrap();
    assert_eq!(l.layers[0].member, format!("./{}", blob(1)));
    // A zero-layer image is valid.
    check(&oci(&[]), UnitKind::Archive, Ok(0));
}

#[test]
fn oci_rejections() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ, TAR]);
    check(&u, a, Ok(2));
    check(
        &replace(&u, "oci-layout", "1.0.0", "2.0.0"),
        a,
        Err("imageLayoutVersion `2.0.0`"),
    );
    check(
        &u.clone().with("oci-layout", "{}"),
        a,
        Err("oci-layout: missing field"),
    );
    check(
        &edit_manifest(&u, GZ, "application/x-rar"),
        a,
        Err("layer 1 has unsupported media type `application/x-rar`"),
    );
    check(
        &edit_manifest(
            &u,
            &format!("sha256:{}", hex(2)),
            &format!("sha512:{}", hex(2)),
        ),
        a,
        Err("layer 2: digest algorithm `sha512`"),
    );
    check(
        &edit_manifest(
            &u,
            &format!("sha256:{}", hex(2)),
            &format!("sha256:A{}", &hex(2)[1..]),
        ),
        a,
        Err("malformed sha256 digest"),
    );
    check(
        &edit_manifest(&u, &format!("sha256:{}", hex(2)), "sha256"),
        a,
        Err("not `algorithm:hex`"),
    );
    check(
        &u.clone().without(&blob(2)),
        a,
        Err(&format!(
            "manifest: layer 2 names missing member `{}`",
            blob(2)
        )),
    );
    check(
        &u.clone().with(&blob(2), vec![0; 99]),
        a,
        Err("is 99 bytes but its descriptor says 11"),
    );
    check(
        &edit_config(&u, &format!(",\"sha256:{}\"", hex(1002)), ""),
        a,
        Err("rootfs lists 1 diff_ids but the manifest has 2 layers"),
    );
    check(
        &edit_config(&u, "\"layers\"", "\"other\""),
        a,
        Err("rootfs type `other`"),
    );
    check(
        &edit_config(&u, &hex(1002), "zz"),
        a,
        Err("diff_id 2: malformed"),
    );
    check(
        &edit_manifest(&u, OCI_CONFIG, "application/vnd.cncf.helm.config.v1+json"),
        a,
        Err("not a container image config"),
    );
    check(
        &edit_manifest(&u, "\"schemaVersion\":2", "\"schemaVersion\":1"),
        a,
        Err("schemaVersion 1"),
    );
    check(
        &replace(&u, "index.json", OCI_MANIFEST, "application/x-foo"),
        a,
        Err("none of its 1 entries"),
    );
    check(
        &u.clone().with("index.json", r#"{"manifests":[]}"#),
        a,
        Err("index.json lists no manifests"),
    );
    // The reader's error (with control characters) comes out on one line.
    let files = u.files.clone();
    let mut read = |name: &str| {
        if name == blob(100) {
            Err("disk\nfull\x07".to_string())
        } else {
            Ok(files[name].clone())
        }
    };
    let e = parse(a, &u.members(), &ManifestOptions::default(), &mut read).unwrap_err();
    assert_eq!(e, "config: cannot read: disk?full?");
}

/// An index.json listing `entries` (JSON descriptors) in front of image `u`.
fn with_index(u: &Unit, entries: &[String]) -> Unit {
    u.clone().with(
        "index.json",
        format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            entries.join(",")
        ),
    )
}

fn platform_desc(u: &Unit, n: u64, os: &str, arch: &str, variant: Option<&str>) -> String {
    let len = u.files[&blob(200)].len();
    let v = variant
        .map(|v| format!(r#","variant":"{v}""#))
        .unwrap_or_default();
    format!(
        r#"{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":{len},"platform":{{"os":"{os}","architecture":"{arch}"{v}}}}}"#,
        hex(n)
    )
}

#[test]
fn oci_index_selection() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ]);
    let m = u.files[&blob(200)].clone();
    // Other platforms' manifests point at other (absent) blobs: never read.
    let multi = with_index(
        &u,
        &[
            platform_desc(&u, 300, "linux", "arm64", Some("v8")),
            platform_desc(&u, 200, "linux", "amd64", None),
            platform_desc(&u, 301, "unknown", "unknown", None),
        ],
    );
    check(&multi, a, Ok(1));
    let variants = with_index(
        &u,
        &[
            platform_desc(&u, 300, "linux", "amd64", Some("v3")),
            platform_desc(&u, 200, "linux", "amd64", Some("v1")),
        ],
    );
    check(&variants, a, Ok(1));
    let two_amd = with_index(
        &u,
        &[
            platform_desc(&u, 300, "linux", "amd64", None),
            platform_desc(&u, 200, "linux", "amd64", None),
        ],
    );
    check(&two_amd, a, Err("lists 2 linux/amd64 images"));
    let no_amd = with_index(
        &u,
        &[
            platform_desc(&u, 300, "linux", "arm64", None),
            platform_desc(&u, 200, "linux", "s390x", None),
        ],
    );
    check(&no_amd, a, Err("no linux/amd64 image"));
    let same = desc(OCI_MANIFEST, 200, m.len());
    check(&with_index(&u, &[same.clone(), same.clone()]), a, Ok(1));
    let two = [
        desc(OCI_MANIFEST, 200, m.len()),
        desc(OCI_MANIFEST, 201, m.len()),
    ];
    check(
        &with_index(&u, &two),
        a,
        Err("holds 2 images without platforms"),
    );
    // 1000 manifests.
    let many: Vec<String> = (0..1000)
        .map(|i| desc(OCI_MANIFEST, 5000 + i, 10))
        .collect();
    check(&with_index(&u, &many), a, Err("holds 1000 images"));
    let mut many: Vec<String> = (0..999)
        .map(|i| platform_desc(&u, 5000 + i, "linux", "arm", None))
        .collect();
    many.push(platform_desc(&u, 200, "linux", "amd64", None));
    check(&with_index(&u, &many), a, Ok(1));

    // One nested index is followed, a second is not.
    let nested = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        platform_desc(&u, 200, "linux", "amd64", None)
    );
    let outer =
        with_index(&u, &[desc(OCI_INDEX, 400, nested.len())]).with(&blob(400), nested.clone());
    check(&outer, a, Ok(1));
    let deeper = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        desc(OCI_INDEX, 401, 2)
    );
    let twice = with_index(&u, &[desc(OCI_INDEX, 400, deeper.len())])
        .with(&blob(400), deeper)
        .with(&blob(401), "{}");
    check(&twice, a, Err("at most 1 nested indexes are followed"));
    let missing = with_index(&u, &[desc(OCI_INDEX, 402, 10)]);
    check(
        &missing,
        a,
        Err("index.json names missing member `blobs/sha256/0000"),
    );
}

/// A docker-archive: old layout (`<id>/layer.tar`, `<hex>.json`) or new
/// (`blobs/sha256/...`).
fn docker(layers: &[&str], config: &str) -> Unit {
    let diff_ids: Vec<String> = (0..layers.len())
        .map(|i| format!("\"sha256:{}\"", hex(i as u64 + 1000)))
        .collect();
    let cfg = format!(
        r#"{{"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let layer_list: Vec<String> = layers.iter().map(|l| format!("\"{l}\"")).collect();
    let manifest = format!(
        r#"[{{"Config":"{config}","RepoTags":["x:latest"],"Layers":[{}]}}]"#,
        layer_list.join(",")
    );
    layers
        .iter()
        .fold(Unit::default(), |u, l| u.with(l, vec![0u8; 7]))
        .with(config, cfg)
        .with("manifest.json", manifest)
        .with("repositories", "{}")
}

#[test]
fn docker_archives() {
    let a = UnitKind::Archive;
    let old = docker(
        &["aaa/layer.tar", "bbb/layer.tar"],
        &format!("{}.json", hex(7)),
    );
    let l = old.run(a).unwrap();
    assert_eq!(l.format, ImageFormat::DockerArchive.name());
    assert_eq!(l.config_digest, Some(format!("sha256:{}", hex(7))));
    assert_eq!(l.layers[1].member, "bbb/layer.tar");
    assert_eq!(l.layers[1].media, LayerMedia::Detect);
    assert_eq!(l.layers[1].digest, None);
    assert_eq!(l.layers[1].diff_id, Some(format!("sha256:{}", hex(1001))));

    let new = docker(&[&blob(1), &blob(2), &blob(1)], &blob(9));
    let l = new.run(a).unwrap();
    assert_eq!(l.layers.len(), 3);
    assert_eq!(l.layers[1].digest, Some(format!("sha256:{}", hex(2))));
    assert_eq!(l.config_digest, Some(format!("sha256:{}", hex(9))));

    // Both markers: see `dual_layout`. oci-layout without index.json is
    // not an OCI archive.
    let half = new
        .clone()
        .with("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#);
    assert_eq!(
        half.run(a).unwrap().format,
        ImageFormat::DockerArchive.name()
    );
    // docker-archive must be one object: as a prefix it is no format this
    // component knows.
    check_none(&new, UnitKind::Prefix);
    check_none(&old, UnitKind::Prefix);
}

#[test]
fn docker_rejections() {
    let a = UnitKind::Archive;
    let u = docker(&["aaa/layer.tar", "abc/layer.tar"], "c.json");
    check(&u, a, Ok(2));
    check(
        &u.clone().without("abc/layer.tar"),
        a,
        Err("manifest.json: layer 2 names missing member `abc/layer.tar`"),
    );
    check(
        &u.clone().without("c.json"),
        a,
        Err("manifest.json: Config names missing member `c.json`"),
    );
    check(
        &replace(&u, "manifest.json", "aaa/layer.tar", "../aaa/layer.tar"),
        a,
        Err("layer 1: path `../aaa/layer.tar` leaves the image"),
    );
    check(
        &replace(&u, "manifest.json", "aaa/layer.tar", "/aaa/layer.tar"),
        a,
        Err("is absolute"),
    );
    check(
        &replace(&u, "manifest.json", "aaa/layer.tar", "./aaa//layer.tar"),
        a,
        Ok(2),
    );
    check(
        &replace(&u, "manifest.json", "\"c.json\"", "\"\""),
        a,
        Err("Config path `` names no member"),
    );
    check(
        &replace(&u, "manifest.json", ",\"abc/layer.tar\"", ""),
        a,
        Err("rootfs lists 2 diff_ids but the manifest.json has 1 layers"),
    );
    let two = replace(
        &u,
        "manifest.json",
        "}]",
        "},{\"Config\":\"c.json\",\"Layers\":[]}]",
    );
    check(
        &two,
        a,
        Err("manifest.json: archive holds 2 images, expected 1"),
    );
    check(
        &u.clone().with("manifest.json", "[]"),
        a,
        Err("archive holds 0 images"),
    );
    let thousand = format!("[{}]", vec!["{\"Config\":1}"; 1000].join(","));
    check(
        &u.clone().with("manifest.json", thousand),
        a,
        Err("archive holds 1000 images"),
    );
    check(
        &u.clone().with("manifest.json", "{}"),
        a,
        Err("manifest.json: invalid type: map"),
    );
    check(
        &u.clone().with(
            "manifest.json",
            r#"[{"Config":"c.json","Config":"c.json","Layers":[]}]"#,
        ),
        a,
        Err("manifest.json: duplicate key `Config`"),
    );
    check(
        &u.clone()
            .with("manifest.json", r#"[{"Config":7,"Layers":[]}]"#),
        a,
        Err("invalid type: integer `7`"),
    );
    check(
        &u.clone().with("c.json", "{\"rootfs\":null}"),
        a,
        Err("config: invalid type: null"),
    );
    // A member listed twice is ambiguous once it is referenced.
    let mut members = u.members();
    members.push(Member {
        name: "./c.json".into(),
        size: 3,
    });
    let e = u.run_members(a, &members).unwrap_err();
    assert!(e.contains("member `c.json` appears 2 times"), "{e}");
}

#[test]
fn single_layer_archive() {
    let u = adhoc(&["etc/passwd", "bin/sh", "index.json", "oci-layout/x"]);
    let l = u.run(UnitKind::Archive).unwrap();
    assert_eq!(l.format, ImageFormat::SingleLayer.name());
    assert_eq!(l.layers.len(), 1);
    assert_eq!(l.layers[0].member, "");
    assert_eq!(l.layers[0].media, LayerMedia::Tar);
    assert_eq!(
        Unit::default().run(UnitKind::Archive).unwrap().format,
        ImageFormat::SingleLayer.name()
    );
}

/// Data-driven check of an archive's format: `Ok(format)` or an error
/// containing `Err(s)`.
fn check_format(unit: &Unit, expected: Result<ImageFormat, &str>) {
    match (
        unit.run_opts(UnitKind::Archive, &ManifestOptions::default()),
        expected,
    ) {
        (Ok(Some(l)), Ok(f)) => assert_eq!(l.format, f.name(), "{l:?}"),
        (Err(e), Err(sub)) => assert!(e.contains(sub), "error {e:?} lacks {sub:?}"),
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

/// A marker's name alone does not make an image archive: a flat root
/// filesystem with a `/manifest.json` (or `oci-layout` and `index.json`)
/// is one layer; an archive of nothing but image members is an image
/// archive, broken or not.
#[test]
fn archive_kind_by_structure() {
    use ImageFormat::{DockerArchive, OciArchive, SingleLayer};
    let rootfs = |names: &[&str]| adhoc(names).with("manifest.json", r#"{"name":"app"}"#);
    let d = docker(&["aaa/layer.tar", "bbb/layer.tar"], "c.json");
    let o = oci(&[GZ, TAR]);
    let dual = docker25(2);
    let docker_list = r#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l.tar"]}]"#;
    let cases: Vec<(&str, Unit, Result<ImageFormat, &str>)> = vec![
        // Flat root filesystems that hold a file with a marker's name.
        (
            "rootfs with /manifest.json",
            rootfs(&["etc/os-release", "usr/bin/x"]),
            Ok(SingleLayer),
        ),
        (
            "./-prefixed rootfs",
            adhoc(&["./etc/os-release", "./usr/bin/x"]).with("./manifest.json", "{}"),
            Ok(SingleLayer),
        ),
        (
            "an app directory",
            rootfs(&["index.html", "app.js"]),
            Ok(SingleLayer),
        ),
        (
            "a docker-like manifest.json naming no member",
            adhoc(&["etc/passwd"]).with("manifest.json", docker_list),
            Ok(SingleLayer),
        ),
        (
            "a docker-like manifest.json naming one member of two",
            adhoc(&["etc/passwd", "l.tar"]).with("manifest.json", docker_list),
            Ok(SingleLayer),
        ),
        (
            "an unreadable manifest.json",
            rootfs(&["etc/passwd"]).with("manifest.json", vec![0xffu8; 3]),
            Ok(SingleLayer),
        ),
        (
            "oci-layout and index.json that names no blob",
            rootfs(&["etc/passwd"])
                .with("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#)
                .with("index.json", r#"{"manifests":[]}"#),
            Ok(SingleLayer),
        ),
        (
            "an OCI archive whose manifest blob is missing, among files",
            o.clone().without(&blob(200)).with("etc/os-release", "x"),
            Ok(SingleLayer),
        ),
        (
            "a docker archive missing a layer, among files",
            d.clone().without("bbb/layer.tar").with("usr/bin/x", "x"),
            Ok(SingleLayer),
        ),
        // Image archives: every member is one an image archive holds...
        ("docker save", d.clone(), Ok(DockerArchive)),
        (
            "./-prefixed docker save",
            {
                let mut u = Unit::default();
                for (k, v) in &d.files {
                    u = u.with(&format!("./{k}"), v.clone());
                }
                u
            },
            Ok(DockerArchive),
        ),
        ("OCI archive", o.clone(), Ok(OciArchive)),
        ("Docker 25 save", dual.clone(), Ok(OciArchive)),
        (
            "docker save with an unknown top-level config name",
            docker(&["l.tar.gz"], "sha256:abc"),
            Ok(DockerArchive),
        ),
        // ...or its description names members that are all there, whatever
        // else the archive holds.
        (
            "docker save with a stray file",
            d.clone().with("notes/README.md", "x"),
            Ok(DockerArchive),
        ),
        (
            "OCI archive with a stray file",
            o.clone().with("etc/os-release", "x"),
            Ok(OciArchive),
        ),
        (
            "Docker 25 save with a stray file",
            dual.clone().with("etc/os-release", "x"),
            Ok(OciArchive),
        ),
        // Broken image archives with nothing else around keep their error.
        (
            "docker save missing a layer",
            d.clone().without("bbb/layer.tar"),
            Err("manifest.json: layer 2 names missing member `bbb/layer.tar`"),
        ),
        (
            "docker save whose manifest.json is an object",
            d.clone().with("manifest.json", r#"{"name":"app"}"#),
            Err("manifest.json: invalid type: map"),
        ),
        (
            "docker save whose manifest.json is not JSON",
            d.clone().with("manifest.json", vec![0xffu8; 3]),
            Err("manifest.json: expected value"),
        ),
        (
            "docker save whose manifest.json climbs out",
            replace(&d, "manifest.json", "aaa/layer.tar", "../aaa/layer.tar"),
            Err("leaves the image"),
        ),
        (
            "OCI archive missing its manifest blob",
            o.clone().without(&blob(200)),
            Err("index.json names missing member `blobs/sha256/0000"),
        ),
        (
            "Docker 25 save whose two descriptions disagree",
            replace(&dual, "manifest.json", &format!(",\"{}\"", blob(2)), ""),
            Err("rootfs lists 2 diff_ids but the manifest.json has 1 layers"),
        ),
    ];
    for (what, unit, want) in cases {
        eprintln!("{what}");
        check_format(&unit, want);
    }
}

/// The markers the structure check reads are read once.
#[test]
fn markers_are_read_once() {
    for u in [
        docker(&["aaa/layer.tar"], "c.json"),
        docker25(1),
        docker25(1).with("etc/os-release", "x"),
        adhoc(&["etc/passwd"]).with("manifest.json", "{}"),
    ] {
        let mut reads: BTreeMap<String, usize> = BTreeMap::new();
        let mut read = |name: &str| {
            *reads.entry(name.to_string()).or_default() += 1;
            u.files
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no member {name}"))
        };
        parse(
            UnitKind::Archive,
            &u.members(),
            &ManifestOptions::default(),
            &mut read,
        )
        .unwrap();
        assert_eq!(reads.get("manifest.json"), Some(&1), "{reads:?}");
        assert!(reads.get("index.json").is_none_or(|n| *n == 1), "{reads:?}");
    }
}

#[test]
fn hostile_json() {
    let a = UnitKind::Archive;
    let d = docker(&["l.tar"], "c.json");
    let o = oci(&[GZ]);
    let deep = "[".repeat(100_000);
    check(
        &d.clone().with("manifest.json", deep.clone()),
        a,
        Err("manifest.json: invalid type: sequence, expected an object"),
    );
    check(
        &d.clone().with("manifest.json", "[{\"Config\":["),
        a,
        Err("manifest.json: EOF"),
    );
    let closed = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
    check(
        &d.clone().with("manifest.json", closed),
        a,
        Err("manifest.json: invalid type: sequence, expected an object"),
    );
    let wide = format!(
        "[{{\"Config\":\"c.json\",\"Layers\":[],\"x\":{}1{}}}]",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    check(
        &d.clone().with("manifest.json", wide),
        a,
        Err("manifest.json: recursion limit exceeded"),
    );
    // 127 levels below the top one are fine.
    let ok_deep = format!(
        "[{{\"Config\":\"c.json\",\"Layers\":[],\"x\":{}1{}}}]",
        "[".repeat(125),
        "]".repeat(125)
    );
    check(
        &d.clone().with("manifest.json", ok_deep),
        a,
        Err("rootfs lists 1 diff_ids but the manifest.json has 0 layers"),
    );
    check(
        &d.clone().with(
            "c.json",
            format!("{{\"rootfs\":{}", "{\"a\":".repeat(50_000)),
        ),
        a,
        Err("config:"),
    );
    check(
        &o.clone().with("index.json", deep),
        a,
        Err("index.json: invalid type: sequence, expected an object"),
    );
    check(
        &o.clone().with(
            "index.json",
            format!("{{\"annotations\":{}", "{\"a\":".repeat(100_000)),
        ),
        a,
        Err("index.json: recursion limit exceeded"),
    );
    check(
        &o.clone().with("index.json", "[]"),
        a,
        Err("index.json: invalid type: sequence"),
    );
    check(
        &o.clone().with("oci-layout", "\u{feff}{}"),
        a,
        Err("oci-layout: expected value"),
    );
    check(
        &o.clone().with("oci-layout", vec![0xff, 0xfe, 0x00]),
        a,
        Err("oci-layout:"),
    );
    check(
        &o.clone().with("oci-layout", ""),
        a,
        Err("EOF while parsing"),
    );
    for size in [
        "1e400",
        "18446744073709551616",
        "-1",
        "1.5",
        "\"12\"",
        "null",
    ] {
        let idx = format!(
            r#"{{"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":{size}}}]}}"#,
            hex(200)
        );
        check(&o.clone().with("index.json", idx), a, Err("index.json:"));
    }
    check(
        &o.clone().with("index.json", r#"{"manifests":"x"}"#),
        a,
        Err("invalid type: string"),
    );
    check(
        &o.clone()
            .with("index.json", r#"{"manifests":[{"mediaType":1}]}"#),
        a,
        Err("invalid type"),
    );
    let long = format!(
        "{{\"imageLayoutVersion\":\"{}\\n\\u001b\"}}",
        "x".repeat(10_000)
    );
    check(
        &o.clone().with("oci-layout", long),
        a,
        Err("imageLayoutVersion `xxx"),
    );
    let huge_name = "n".repeat(100_000);
    check(&adhoc(&["1.tar", &huge_name]), UnitKind::Prefix, Err("nnn"));
    let weird = "\u{202e}evil\r\n`rm`";
    check(
        &adhoc(&["1.tar", weird]),
        UnitKind::Prefix,
        Err("`?evil??'rm'`"),
    );
    // Member listed with one size but read with another.
    let mut read = |_: &str| Ok(vec![b' '; 3]);
    let e = parse(
        a,
        &[Member {
            name: "manifest.json".into(),
            size: 1,
        }],
        &ManifestOptions::default(),
        &mut read,
    );
    assert!(e
        .unwrap_err()
        .contains("manifest.json: read 3 bytes but the member is listed as 1 bytes"));
    let members = [
        Member {
            name: "index.json".into(),
            size: 1,
        },
        Member {
            name: "oci-layout".into(),
            size: 1,
        },
    ];
    let e = parse(a, &members, &ManifestOptions::default(), &mut read).unwrap_err();
    assert!(
        e.contains("oci-layout: read 3 bytes but the member is listed as 1 bytes"),
        "{e}"
    );
}

// ------------------------------------------------- runtime config, options

/// Replaces the manifest blob with `text` (keeping index.json's size right).
fn set_manifest(u: &Unit, text: &str) -> Unit {
    let old = String::from_utf8(u.files[&blob(200)].clone()).unwrap();
    edit_manifest(u, &old, text)
}

/// The OCI image `u` with a `config` object `run` in its image config.
fn with_run_config(u: &Unit, run: &str) -> Unit {
    edit_config(
        u,
        "\"os\":\"linux\"",
        &format!("\"os\":\"linux\",\"config\":{run}"),
    )
}

#[test]
fn runtime_config() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ]);
    // No `config` object: an empty runtime config.
    assert_eq!(u.run(a).unwrap().config, Some(RuntimeConfig::default()));
    let full = with_run_config(
        &u,
        r#"{"Env":["A=1","PATH=/bin"],"Entrypoint":null,"Cmd":["/bin/sh","-c","x"],"WorkingDir":"/w","User":"1000:1000","Labels":{"a":"b"},"ExposedPorts":{"80/tcp":{}}}"#,
    );
    let want = RuntimeConfig {
        env: vec!["A=1".into(), "PATH=/bin".into()],
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into(), "-c".into(), "x".into()],
        working_dir: "/w".into(),
        user: "1000:1000".into(),
    };
    assert_eq!(full.run(a).unwrap().config, Some(want.clone()));
    // The docker config's `config` the same way.
    let d = docker(&["l.tar"], "c.json");
    assert_eq!(d.run(a).unwrap().config, Some(RuntimeConfig::default()));
    let text = String::from_utf8(d.files["c.json"].clone()).unwrap();
    let d = d.clone().with(
        "c.json",
        text.replacen(
            '{',
            r#"{"config":{"Env":["A=1","PATH=/bin"],"Cmd":["/bin/sh","-c","x"],"WorkingDir":"/w","User":"1000:1000"},"#,
            1,
        ),
    );
    assert_eq!(d.run(a).unwrap().config, Some(want));
    // Formats without a config have none.
    assert_eq!(
        adhoc(&["1.tar"]).run(UnitKind::Prefix).unwrap().config,
        None
    );
    assert_eq!(adhoc(&["x"]).run(a).unwrap().config, None);

    let env = |n: usize, len: usize| {
        let entries: Vec<String> = (0..n).map(|_| format!("\"{}\"", "e".repeat(len))).collect();
        format!("{{\"Env\":[{}]}}", entries.join(","))
    };
    let long = format!("\"{}\"", "w".repeat(MAX_CONFIG_STRING + 1));
    let cases: Vec<(String, Result<usize, &str>)> = vec![
        (env(MAX_CONFIG_ENTRIES, 1), Ok(1)),
        (
            env(MAX_CONFIG_ENTRIES + 1, 1),
            Err("config: Env has 1001 entries (at most 1000)"),
        ),
        (env(1, MAX_CONFIG_STRING), Ok(1)),
        (
            env(2, MAX_CONFIG_STRING + 1),
            Err("config: Env entry 1 is 65537 bytes (at most 65536)"),
        ),
        (
            format!("{{\"WorkingDir\":{long}}}"),
            Err("config: WorkingDir is 65537 bytes"),
        ),
        (
            format!("{{\"User\":{long}}}"),
            Err("config: User is 65537 bytes"),
        ),
        (
            r#"{"Cmd":["a","b\u0000c"]}"#.into(),
            Err("config: Cmd entry 2 contains NUL"),
        ),
        (
            r#"{"WorkingDir":"/\u0000"}"#.into(),
            Err("config: WorkingDir contains NUL"),
        ),
        (
            r#"{"Cmd":"/bin/sh"}"#.into(),
            Err("config: invalid type: string"),
        ),
        (
            r#"{"Env":[1]}"#.into(),
            Err("config: invalid type: integer"),
        ),
        ("null".into(), Ok(1)),
        (r#"{"Env":null,"Cmd":null,"User":null}"#.into(), Ok(1)),
        (
            r#"[["x"]]"#.into(),
            Err("config: invalid type: sequence, expected an object"),
        ),
    ];
    for (run, want) in cases {
        check(&with_run_config(&u, &run), a, want);
    }
}

/// Descriptor of an index blob `n` listing `entries` in unit `u`, and the
/// unit with that blob.
fn nest(u: &Unit, n: u64, entries: &[String]) -> (Unit, String) {
    let text = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        entries.join(",")
    );
    let d = desc(OCI_INDEX, n, text.len());
    (u.clone().with(&blob(n), text), d)
}

fn depth(n: u32) -> ManifestOptions {
    ManifestOptions {
        max_index_depth: n,
        ..ManifestOptions::default()
    }
}

#[test]
fn nested_indexes() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ, TAR]);
    let m = desc(OCI_MANIFEST, 200, u.files[&blob(200)].len());
    // index.json -> 401 -> 402 -> 403 -> manifest.
    let (u3, d3) = nest(&u, 403, std::slice::from_ref(&m));
    let (u2, d2) = nest(&u3, 402, &[d3]);
    let (u1, d1) = nest(&u2, 401, &[d2]);
    let chain = with_index(&u1, &[d1]);
    for (max, want) in [
        (
            0,
            Err("index.json points to a further index; at most 0 nested indexes"),
        ),
        (
            1,
            Err("nested index `sha256:000000000000` points to a further index; at most 1"),
        ),
        (2, Err("at most 2 nested indexes are followed")),
        (3, Ok(2)),
        (8, Ok(2)),
        (u32::MAX, Ok(2)),
    ] {
        check_opts(&chain, a, &depth(max), want);
    }
    check(&with_index(&u, &[m]), a, Ok(2));

    // A cycle: 410 lists itself (its descriptor carries its own size).
    let mut size = 0;
    let mut cyc = u.clone();
    for _ in 0..4 {
        let (c, d) = nest(&u, 410, &[desc(OCI_INDEX, 410, size)]);
        size = c.files[&blob(410)].len();
        cyc = with_index(&c, &[d]);
    }
    let want = format!(
        "nested index `sha256:000000000000`: index cycle at sha256:{}",
        hex(410)
    );
    check_opts(&cyc, a, &depth(8), Err(&want));
    check_opts(&cyc, a, &depth(u32::MAX), Err("index cycle at sha256:"));
    // 411 -> 412 -> 411: the second visit of 411 is the cycle.
    let sizes = (0..4).fold((0, 0), |(s411, s412), _| {
        let (c, _) = nest(&u, 412, &[desc(OCI_INDEX, 411, s411)]);
        let (c, _) = nest(&c, 411, &[desc(OCI_INDEX, 412, s412)]);
        (c.files[&blob(411)].len(), c.files[&blob(412)].len())
    });
    let (c, _) = nest(&u, 412, &[desc(OCI_INDEX, 411, sizes.0)]);
    let (c, d411) = nest(&c, 411, &[desc(OCI_INDEX, 412, sizes.1)]);
    check_opts(
        &with_index(&c, &[d411]),
        a,
        &depth(8),
        Err(&format!("index cycle at sha256:{}", hex(411))),
    );
    // A nested index with a malformed digest is rejected before it is read.
    let bad =
        format!(r#"{{"mediaType":"{OCI_INDEX}","digest":"sha256:../../etc/passwd","size":1}}"#);
    check(
        &with_index(&u, &[bad]),
        a,
        Err("index.json: malformed sha256 digest"),
    );
}

fn arm64() -> ManifestOptions {
    ManifestOptions {
        architecture: "arm64".into(),
        ..ManifestOptions::default()
    }
}

fn with_variant(opts: ManifestOptions, v: &str) -> ManifestOptions {
    ManifestOptions {
        arch_variant: Some(v.into()),
        ..opts
    }
}

#[test]
fn platform_options() {
    let a = UnitKind::Archive;
    let u = edit_config(&oci(&[GZ]), "\"amd64\"", "\"arm64\"");
    // Blob 200 (the image) is arm64/v8; 300 and 301 are absent, so choosing
    // them fails with `names missing member` and the blob's number.
    let idx = |entries: &[(u64, &str, Option<&str>)]| {
        let entries: Vec<String> = entries
            .iter()
            .map(|&(n, arch, v)| platform_desc(&u, n, "linux", arch, v))
            .collect();
        with_index(&u, &entries)
    };
    let missing = |n: u64| format!("names missing member `{}`", blob(n));
    let cases: Vec<(Unit, ManifestOptions, Result<usize, String>)> = vec![
        (
            idx(&[(300, "amd64", None), (200, "arm64", Some("v8"))]),
            arm64(),
            Ok(1),
        ),
        (
            idx(&[(300, "amd64", None), (200, "arm64", Some("v8"))]),
            ManifestOptions::default(),
            Err(missing(300)),
        ),
        // No variant asked: the entry without one is preferred.
        (
            idx(&[(300, "arm64", None), (200, "arm64", Some("v8"))]),
            arm64(),
            Err(missing(300)),
        ),
        (
            idx(&[(300, "arm64", None), (200, "arm64", Some("v8"))]),
            with_variant(arm64(), "v8"),
            Ok(1),
        ),
        (
            idx(&[(300, "arm64", Some("")), (200, "arm64", Some("v8"))]),
            arm64(),
            Err(missing(300)),
        ),
        // `v1` counts as no variant on amd64 only.
        (
            idx(&[(300, "arm64", Some("v1")), (301, "arm64", Some("v8"))]),
            arm64(),
            Err("lists 2 linux/arm64 images".into()),
        ),
        (
            idx(&[(300, "arm64", Some("v8")), (301, "amd64", None)]),
            with_variant(arm64(), "v7"),
            Err("has no linux/arm64/v7 image among its 2 entries".into()),
        ),
        (
            idx(&[(300, "arm64", Some("v8")), (301, "arm64", Some("v8"))]),
            with_variant(arm64(), "v8"),
            Err("lists 2 linux/arm64/v8 images".into()),
        ),
        (
            idx(&[(300, "amd64", None), (301, "arm", Some("v7"))]),
            ManifestOptions {
                os: "freebsd".into(),
                ..ManifestOptions::default()
            },
            Err("has no freebsd/amd64 image".into()),
        ),
    ];
    for (unit, opts, want) in cases {
        check_opts(
            &unit,
            a,
            &opts,
            want.as_ref().map(|n| *n).map_err(String::as_str),
        );
    }
    // amd64 variants: v3 asked for explicitly.
    let amd = oci(&[GZ]);
    let v3 = with_index(
        &amd,
        &[
            platform_desc(&amd, 300, "linux", "amd64", None),
            platform_desc(&amd, 200, "linux", "amd64", Some("v3")),
        ],
    );
    check_opts(
        &v3,
        a,
        &with_variant(ManifestOptions::default(), "v3"),
        Ok(1),
    );
    check(&v3, a, Err(&missing(300)));
}

// ------------------------------------------------ hostile catalogue F

#[test]
fn f49_index_and_manifest_confusion() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ, TAR]);
    let m = u.files[&blob(200)].clone();
    let cases: Vec<(Unit, &str)> = vec![
        (
            edit_manifest(&u, "\"layers\"", "\"manifests\":[],\"layers\""),
            "manifest has `manifests`, as an index does",
        ),
        (
            edit_manifest(&u, "\"layers\"", "\"manifests\":null,\"layers\""),
            "manifest has `manifests`",
        ),
        (
            replace(&u, "index.json", "\"manifests\"", "\"layers\":[],\"manifests\""),
            "index.json has `layers`, as a manifest does",
        ),
        (
            replace(&u, "index.json", "\"manifests\"", "\"config\":{},\"manifests\""),
            "index.json has `config`",
        ),
        (
            replace(
                &u,
                "index.json",
                "{\"schemaVersion\":2,",
                &format!("{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\","),
            ),
            "index.json: mediaType `application/vnd.oci.image.manifest.v1+json` is not an image index",
        ),
        (
            edit_manifest(&u, OCI_MANIFEST, DOCKER_MANIFEST),
            "manifest: mediaType `application/vnd.docker.distribution.manifest.v2+json` differs from its descriptor's",
        ),
        // The index calls the manifest an index.
        (
            with_index(&u, &[desc(OCI_INDEX, 200, m.len())]),
            "nested index `sha256:000000000000` has `config`, as a manifest does: not a valid index",
        ),
        // ... or a manifest without mediaType an index: it has `layers`.
        (
            with_index(
                &edit_manifest(&u, &format!("\"mediaType\":\"{OCI_MANIFEST}\","), ""),
                &[desc(OCI_INDEX, 200, m.len() - OCI_MANIFEST.len() - 15)],
            ),
            "has `config`, as a manifest does",
        ),
        (
            edit_manifest(&u, GZ, OCI_MANIFEST),
            "manifest: layer 1 has unsupported media type `application/vnd.oci.image.manifest.v1+json`",
        ),
        (
            edit_manifest(&u, OCI_CONFIG, OCI_MANIFEST),
            "config media type `application/vnd.oci.image.manifest.v1+json` is not a container image config",
        ),
        (edit_manifest(&u, "\"layers\":[", "\"layers\":null,\"x\":["), "`layers` is missing or null"),
        (edit_manifest(&u, "\"config\":", "\"x\":"), "`config` is missing or null"),
        (
            replace(&u, "index.json", "\"manifests\":[", "\"manifests\":null,\"x\":["),
            "index.json: `manifests` is missing or null",
        ),
    ];
    for (unit, want) in cases {
        check(&unit, a, Err(want));
    }
    // An index entry that points at an index whose mediaType says manifest.
    let text = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","manifests":[{}]}}"#,
        desc(OCI_MANIFEST, 200, m.len())
    );
    let bad = with_index(&u, &[desc(OCI_INDEX, 400, text.len())]).with(&blob(400), text);
    check(&bad, a, Err("mediaType `application/vnd.oci.image.manifest.v1+json` differs from its descriptor's `application/vnd.oci.image.index.v1+json`"));
}

#[test]
fn f50_schema1() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ]);
    let s1 = format!(
        r#"{{"schemaVersion":1,"name":"x","tag":"latest","architecture":"amd64","fsLayers":[{{"blobSum":"sha256:{}"}}],"history":[]}}"#,
        hex(1)
    );
    check(
        &set_manifest(&u, &s1),
        a,
        Err("manifest: schema 1 manifest (`fsLayers`) is not supported"),
    );
    for media in [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    ] {
        check(
            &replace(&u, "index.json", OCI_MANIFEST, media),
            a,
            Err("index.json: schema 1 manifests are not supported"),
        );
    }
    check(
        &replace(
            &u,
            "index.json",
            "\"manifests\"",
            "\"fsLayers\":[],\"manifests\"",
        ),
        a,
        Err("index.json: schema 1 manifest"),
    );
}

#[test]
fn f51_digests() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ, TAR]);
    let l2 = format!("sha256:{}", hex(2));
    let cfg = format!("sha256:{}", hex(100));
    let mfst = format!("sha256:{}", hex(200));
    let upper = format!("sha256:{}", hex(2).to_uppercase().replace('0', "A"));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            &l2,
            "sha256:../../etc/passwd".into(),
            "layer 2: malformed sha256 digest `sha256:../../etc/passwd`",
        ),
        (
            &l2,
            "sha256:../../../../../../../../../../../../../../../../../../etc/pass".into(),
            "layer 2: malformed",
        ),
        (&l2, upper, "layer 2: malformed sha256 digest"),
        (
            &l2,
            format!("sha256:{}", &hex(2)[1..]),
            "layer 2: malformed",
        ),
        (&l2, format!("sha256:{}0", hex(2)), "layer 2: malformed"),
        (&l2, "sha256:abc".into(), "layer 2: malformed"),
        (
            &l2,
            "md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            "layer 2: digest algorithm `md5` is not supported",
        ),
        (
            &l2,
            format!("blake3:{}", hex(2)),
            "digest algorithm `blake3`",
        ),
        (
            &l2,
            format!("SHA256:{}", hex(2)),
            "digest algorithm `SHA256`",
        ),
        (
            &l2,
            format!("sha512:{}{}", hex(2), hex(2)),
            "digest algorithm `sha512`",
        ),
        (
            &l2,
            String::new(),
            "layer 2: digest `` is not `algorithm:hex`",
        ),
        (&l2, format!("sha256:{}\\n", hex(2)), "layer 2: malformed"),
        (
            &cfg,
            "sha256:/etc/passwd".into(),
            "manifest: malformed sha256 digest `sha256:/etc/passwd`",
        ),
        (
            &cfg,
            format!("md5:{}", hex(100)),
            "manifest: digest algorithm `md5`",
        ),
    ];
    for (from, to, want) in &cases {
        check(&edit_manifest(&u, from, to), a, Err(want));
    }
    for (to, want) in [
        (
            "sha256:../blobs/sha256/x",
            "index.json: malformed sha256 digest",
        ),
        ("md5:x", "index.json: digest algorithm `md5`"),
    ] {
        check(&replace(&u, "index.json", &mfst, to), a, Err(want));
    }
}

#[test]
fn f56_foreign_layers() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ, TAR]);
    let from = format!("\"digest\":\"sha256:{}\"", hex(1));
    let to = format!("\"urls\":[\"https://example.com/l\"],{from}");
    let foreign = edit_manifest(
        &u,
        &format!("\"mediaType\":\"{GZ}\",{from}"),
        &format!(
            "\"mediaType\":\"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip\",{to}"
        ),
    );
    // The blob is in the image: used like any other, never fetched.
    let l = foreign.run(a).unwrap();
    assert_eq!(l.layers[0].member, blob(1));
    assert_eq!(l.layers[0].media, LayerMedia::Gzip);
    check(
        &foreign.clone().without(&blob(1)),
        a,
        Err("manifest: layer 1 is a foreign layer (it has `urls`) whose blob is not in the image; layers are never fetched"),
    );
    check(
        &edit_manifest(&u, &from, &format!("\"urls\":[],{from}")).without(&blob(1)),
        a,
        Err("manifest: layer 1 names missing member"),
    );
    check(
        &edit_manifest(&u, &from, &format!("\"urls\":\"http://x\",{from}")),
        a,
        Err("manifest: invalid type: string"),
    );
}

#[test]
fn f60_docker_manifest_and_foreign_os() {
    let a = UnitKind::Archive;
    let d = docker(&["aaa/layer.tar", "bbb/layer.tar"], "c.json");
    let cfg = String::from_utf8(d.files["c.json"].clone()).unwrap();
    let with_cfg = |extra: &str| {
        d.clone()
            .with("c.json", cfg.replacen('{', &format!("{{{extra}"), 1))
    };
    let cases: Vec<(Unit, Result<usize, &str>)> = vec![
        (
            d.clone().with("manifest.json", "null"),
            Err("manifest.json is null instead of a list of images"),
        ),
        (
            d.clone().with("manifest.json", " null "),
            Err("manifest.json is null"),
        ),
        (
            replace(&d, "manifest.json", ",\"bbb/layer.tar\"", ""),
            Err("rootfs lists 2 diff_ids but the manifest.json has 1 layers"),
        ),
        (
            replace(
                &d,
                "manifest.json",
                "\"Layers\":[",
                "\"Layers\":[\"aaa/layer.tar\",",
            ),
            Err("rootfs lists 2 diff_ids but the manifest.json has 3 layers"),
        ),
        (
            replace(
                &d,
                "manifest.json",
                "[\"aaa/layer.tar\",\"bbb/layer.tar\"]",
                "null",
            ),
            Err("manifest.json: invalid type: null"),
        ),
        (
            with_cfg(r#""os":"windows","#),
            Err("config: image is for `windows/amd64`, not linux/amd64"),
        ),
        (
            with_cfg(r#""os":"linux","architecture":"arm64","#),
            Err("config: image is for `linux/arm64`, not linux/amd64"),
        ),
        (with_cfg(r#""os":"linux","architecture":"amd64","#), Ok(2)),
        (with_cfg(r#""os":"","architecture":"","#), Ok(2)),
        (
            with_cfg(r#""os":7,"#),
            Err("config: invalid type: integer `7`"),
        ),
    ];
    for (unit, want) in cases {
        check(&unit, a, want);
    }
    // Zero layers: docker omits `diff_ids`.
    let empty = docker(&[], "c.json").with("c.json", r#"{"rootfs":{"type":"layers"}}"#);
    check(&empty, a, Ok(0));
    // An OCI image's config is checked the same way.
    let arm = edit_config(&oci(&[GZ]), "\"amd64\"", "\"arm64\"");
    check(
        &arm,
        a,
        Err("config: image is for `linux/arm64`, not linux/amd64"),
    );
    check_opts(&arm, a, &arm64(), Ok(1));
}

/// A Docker 25+ `docker save`: an OCI archive whose manifest.json lists
/// the same blobs (uncompressed layers) and config.
fn docker25(layers: usize) -> Unit {
    let u = oci(&vec![TAR; layers]);
    let list: Vec<String> = (1..=layers as u64)
        .map(|n| format!("\"{}\"", blob(n)))
        .collect();
    u.with(
        "manifest.json",
        format!(
            r#"[{{"Config":"{}","RepoTags":["x:latest"],"Layers":[{}]}}]"#,
            blob(100),
            list.join(",")
        ),
    )
    .with("repositories", "{}")
}

#[test]
fn f62_dual_layout() {
    let a = UnitKind::Archive;
    let u = docker25(2);
    let l = u.run(a).unwrap();
    assert_eq!(l.format, ImageFormat::OciArchive.name());
    assert_eq!(l.layers[1].digest, Some(format!("sha256:{}", hex(2))));
    assert_eq!(l.layers[1].media, LayerMedia::Tar);
    // The same as a prefix: an OCI layout, checked against manifest.json.
    assert_eq!(
        u.run(UnitKind::Prefix).unwrap().format,
        ImageFormat::OciLayout.name()
    );

    // A second config (101) for manifest.json: same diff_ids, other Env.
    let cfg = String::from_utf8(u.files[&blob(100)].clone()).unwrap();
    let other_cfg = cfg.replacen('{', r#"{"config":{"Env":["X=1"]},"#, 1);
    let one_layer_cfg = cfg.replace(&format!(",\"sha256:{}\"", hex(1002)), "");
    let cases: Vec<(Unit, Result<usize, &str>)> = vec![
        (
            replace(
                &u,
                "manifest.json",
                &format!("\"{}\",\"{}\"", blob(1), blob(2)),
                &format!("\"{}\",\"{}\"", blob(2), blob(1)),
            ),
            Err("index.json and manifest.json disagree on layer 1: `blobs/sha256/0000"),
        ),
        (
            replace(&u, "manifest.json", &format!(",\"{}\"", blob(2)), "")
                .with(&blob(101), one_layer_cfg.clone()),
            // manifest.json's own config still lists 2 diff_ids.
            Err("config: rootfs lists 2 diff_ids but the manifest.json has 1 layers"),
        ),
        (
            replace(&u, "manifest.json", &format!(",\"{}\"", blob(2)), "")
                .with(&blob(101), one_layer_cfg)
                .with("manifest.json", {
                    let t = String::from_utf8(u.files["manifest.json"].clone()).unwrap();
                    t.replace(&format!(",\"{}\"", blob(2)), "")
                        .replace(&blob(100), &blob(101))
                }),
            Err("index.json and manifest.json disagree: 2 layers against 1"),
        ),
        (
            replace(&u, "manifest.json", &blob(100), &blob(101))
                .with(&blob(101), other_cfg.clone()),
            Err("index.json and manifest.json disagree on the image config"),
        ),
        (
            replace(
                &u,
                "manifest.json",
                &blob(100),
                &format!("{}.json", hex(100)),
            )
            .with(&format!("{}.json", hex(100)), other_cfg),
            Err("index.json and manifest.json disagree on the runtime config"),
        ),
        (
            replace(
                &u,
                "manifest.json",
                &format!("\"{}\"]", blob(2)),
                "\"./blobs//sha256/x/../x\"]",
            ),
            Err("path `./blobs//sha256/x/../x` leaves the image"),
        ),
        (
            replace(
                &u,
                "manifest.json",
                &format!("\"{}\"]", blob(2)),
                &format!("\"./{}\"]", blob(2)),
            ),
            Ok(2),
        ),
        (
            u.clone().with("manifest.json", "null"),
            Err("manifest.json is null"),
        ),
        // The OCI side is checked in full too.
        (
            edit_manifest(&u, TAR, "application/x-foo"),
            Err("manifest: layer 1 has unsupported media type"),
        ),
    ];
    for (unit, want) in cases {
        check(&unit, a, want);
    }
    // `docker save IMAGE@DIGEST` (Docker 25) writes `"manifests": null`;
    // manifest.json alone then describes the image.
    for list in ["null", "[]"] {
        let u = replace(
            &u,
            "index.json",
            &format!("[{}]", desc(OCI_MANIFEST, 200, u.files[&blob(200)].len())),
            list,
        );
        let l = u.run(a).unwrap();
        assert_eq!(l.format, ImageFormat::DockerArchive.name());
        assert_eq!(l.layers.len(), 2);
        // Only in an archive: a prefix is an OCI layout.
        check(&u, UnitKind::Prefix, Err("index.json"));
    }
}

#[test]
fn f63_legacy_v1() {
    let a = UnitKind::Archive;
    let id = hex(5);
    let legacy = Unit::default()
        .with("repositories", format!(r#"{{"x":{{"latest":"{id}"}}}}"#))
        .with(&format!("{id}/json"), "{}")
        .with(&format!("{id}/layer.tar"), vec![0u8; 7])
        .with(&format!("{id}/VERSION"), "1.0");
    check(
        &legacy,
        a,
        Err("legacy docker image format (v1.0) is not supported"),
    );
    check(
        &legacy.clone().with(&format!("./{}/json", hex(6)), "{}"),
        a,
        Err("legacy docker image format"),
    );
    // Docker < 25 writes the v1.0 members next to manifest.json: docker-archive.
    let both = docker(&[&format!("{id}/layer.tar")], "c.json")
        .with(&format!("{id}/json"), "{}")
        .with(&format!("{id}/VERSION"), "1.0");
    check(&both, a, Ok(1));
    // A flat rootfs with a `repositories` file, or `<id>/json` alone: single layer.
    for u in [
        adhoc(&["repositories", "etc/json", "x/json"]),
        adhoc(&[&format!("{id}/json"), "etc/passwd"]),
    ] {
        assert_eq!(u.run(a).unwrap().format, ImageFormat::SingleLayer.name());
    }
    // As a prefix: no format this component knows.
    check_none(&legacy, UnitKind::Prefix);
}

#[test]
fn f64_layout_version() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ]);
    for (text, want) in [
        (
            r#"{"imageLayoutVersion":"1.0.1"}"#,
            Err("unsupported imageLayoutVersion `1.0.1`"),
        ),
        (
            r#"{"imageLayoutVersion":"1.0"}"#,
            Err("unsupported imageLayoutVersion `1.0`"),
        ),
        (
            r#"{"imageLayoutVersion":"1.0.0 "}"#,
            Err("unsupported imageLayoutVersion"),
        ),
        (
            r#"{"imageLayoutVersion":1}"#,
            Err("oci-layout: invalid type: integer"),
        ),
        (
            r#"{"imageLayoutVersion":null}"#,
            Err("oci-layout: invalid type: null"),
        ),
        (
            r#"["1.0.0"]"#,
            Err("oci-layout: invalid type: sequence, expected an object"),
        ),
        (r#"{"imageLayoutVersion":"1.0.0","x":[]}"#, Ok(1)),
    ] {
        check(&u.clone().with("oci-layout", text), a, want);
    }
}

#[test]
fn f66_duplicate_and_case_variant_keys() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ, TAR]);
    let l1 = format!("\"digest\":\"sha256:{}\"", hex(1));
    let cases: Vec<(Unit, Result<usize, &str>)> = vec![
        (
            edit_manifest(&u, "\"layers\":[", "\"Layers\":[],\"layers\":["),
            Err("manifest: key `Layers` differs from `layers` only in case"),
        ),
        (
            edit_manifest(&u, "\"layers\":[", "\"LAYERS\":[],\"layers\":["),
            Err("key `LAYERS` differs from `layers`"),
        ),
        (
            edit_manifest(&u, "\"layers\":[", "\"layers\":[],\"layers\":["),
            Err("manifest: duplicate key `layers`"),
        ),
        (
            edit_manifest(&u, &l1, &format!("\"Digest\":\"sha256:{}\",{l1}", hex(3))),
            Err("key `Digest` differs from `digest` only in case"),
        ),
        (
            edit_manifest(&u, &l1, &format!("{l1},{l1}")),
            Err("duplicate key `digest`"),
        ),
        (
            edit_manifest(
                &u,
                "\"schemaVersion\":2",
                "\"schemaVersion\":2,\"SchemaVersion\":1",
            ),
            Err("key `SchemaVersion` differs"),
        ),
        (
            replace(
                &u,
                "index.json",
                "\"manifests\":[",
                "\"Manifests\":[],\"manifests\":[",
            ),
            Err("index.json: key `Manifests` differs from `manifests`"),
        ),
        (
            replace(&u, "oci-layout", "{", "{\"ImageLayoutVersion\":\"2.0.0\","),
            Err("oci-layout: key `ImageLayoutVersion` differs"),
        ),
        (
            edit_config(&u, "\"diff_ids\"", "\"Diff_IDs\":[],\"diff_ids\""),
            Err("config: key `Diff_IDs` differs from `diff_ids`"),
        ),
        (
            with_run_config(&u, r#"{"Env":["A=1"],"env":["A=2"]}"#),
            Err("config: key `env` differs from `Env` only in case"),
        ),
        (
            with_run_config(&u, r#"{"CMD":["x"]}"#),
            Err("key `CMD` differs from `Cmd`"),
        ),
        (
            with_run_config(&u, r#"{"Env":["A=1"],"Env":["A=2"]}"#),
            Err("config: duplicate key `Env`"),
        ),
        // Duplicates anywhere are ambiguous, even in free-form maps.
        (
            edit_manifest(
                &u,
                &l1,
                &format!("\"annotations\":{{\"a\":\"1\",\"a\":\"2\"}},{l1}"),
            ),
            Err("manifest: duplicate key `a`"),
        ),
        (
            with_run_config(&u, r#"{"Labels":{"x":{"y":1,"y":2}}}"#),
            Err("config: duplicate key `y`"),
        ),
        // Keys differing in case are fine where no field is expected.
        (
            edit_manifest(
                &u,
                &l1,
                &format!("\"annotations\":{{\"a\":\"1\",\"A\":\"2\"}},{l1}"),
            ),
            Ok(2),
        ),
        (
            with_run_config(&u, r#"{"Labels":{"env":"1","Env":"2"}}"#),
            Ok(2),
        ),
        (
            edit_manifest(&u, "\"layers\":[", "\"Layer\":[],\"layers\":["),
            Ok(2),
        ),
    ];
    for (unit, want) in cases {
        check(&unit, a, want);
    }
    // Platforms in index entries.
    let p = with_index(
        &u,
        &[
            platform_desc(&u, 300, "linux", "arm64", None),
            platform_desc(&u, 200, "linux", "amd64", None)
                .replace("\"os\"", "\"OS\":\"windows\",\"os\""),
        ],
    );
    check(
        &p,
        a,
        Err("index.json: key `OS` differs from `os` only in case"),
    );

    let d = docker(&["aaa/layer.tar"], "c.json");
    for (from, to, want) in [
        (
            "\"Config\"",
            "\"config\":\"x.json\",\"Config\"",
            "manifest.json: key `config` differs from `Config` only in case",
        ),
        (
            "\"Layers\":[",
            "\"layers\":[],\"Layers\":[",
            "key `layers` differs from `Layers`",
        ),
        (
            "\"Layers\":[",
            "\"Layers\":[],\"Layers\":[",
            "manifest.json: duplicate key `Layers`",
        ),
    ] {
        check(&replace(&d, "manifest.json", from, to), a, Err(want));
    }
}

/// What oci-spec's types require but tarpool accepted before it still is:
/// no `schemaVersion` in an index or a manifest, a config without `os` and
/// `architecture` (or with them null), a config without `diff_ids` for no
/// layers; an `armbe` image is chosen for `armbe`, though oci-spec names
/// that architecture `arm64be`.
#[test]
fn oci_spec_leniencies_kept() {
    let a = UnitKind::Archive;
    let u = oci(&[GZ]);
    check(
        &replace(&u, "index.json", "\"schemaVersion\":2,", ""),
        a,
        Ok(1),
    );
    check(&edit_manifest(&u, "\"schemaVersion\":2,", ""), a, Ok(1));
    check(
        &edit_config(&u, r#""architecture":"amd64","os":"linux","#, ""),
        a,
        Ok(1),
    );
    check(
        &edit_config(
            &u,
            r#""architecture":"amd64","os":"linux","#,
            r#""architecture":null,"os":null,"#,
        ),
        a,
        Ok(1),
    );
    let none = oci(&[]);
    check(&edit_config(&none, r#","diff_ids":[]"#, ""), a, Ok(0));
    // Still rejected: a null diff_ids, a schemaVersion other than 2.
    check(
        &edit_config(&none, r#""diff_ids":[]"#, r#""diff_ids":null"#),
        a,
        Err("config: invalid type: null"),
    );
    let armbe = ManifestOptions {
        architecture: "armbe".into(),
        ..ManifestOptions::default()
    };
    let u = edit_config(&u, r#""architecture":"amd64""#, r#""architecture":"armbe""#);
    let entries = [
        platform_desc(&u, 200, "linux", "armbe", None),
        platform_desc(&u, 200, "linux", "amd64", None),
    ];
    // Two entries of one digest are one image: give the amd64 one its own.
    let other = u.files[&blob(200)].clone();
    let u = with_index(
        &u.with(&blob(201), other),
        &[entries[0].clone(), entries[1].replace(&hex(200), &hex(201))],
    );
    check_opts(&u, a, &armbe, Ok(1));
    // The one thing lost: oci-spec reads `armbe` and `arm64be` as one
    // architecture, so `arm64be` takes the `armbe` image too (before
    // oci-spec it found none).
    let arm64be = ManifestOptions {
        architecture: "arm64be".into(),
        ..ManifestOptions::default()
    };
    check_opts(&u, a, &arm64be, Ok(1));
}

// --------------------------------------------------------------- registry

const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST_V2: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The OCI image `u` (see [`oci`]) as a registry serves it: its reference
/// names `top` (the manifest, blob 200, or the index); the config and the
/// layers are read as `blobs/sha256/<hex>`, a manifest an index names as
/// `manifests/sha256/<hex>`.
fn registry(u: &Unit, top: &str) -> Unit {
    let mut r = Unit::default().with("manifest", u.files[top].clone());
    for (name, bytes) in &u.files {
        if let Some(h) = name.strip_prefix("blobs/sha256/") {
            r = r
                .with(name, bytes.clone())
                .with(&format!("manifests/sha256/{h}"), bytes.clone());
        }
    }
    r
}

/// Parses a registry image (its one member, `manifest`), recording every
/// name read.
fn run_registry(u: &Unit, opts: &ManifestOptions) -> (Result<ImageLayout, String>, Vec<String>) {
    let members = [Member {
        name: "manifest".into(),
        size: u.files["manifest"].len() as u64,
    }];
    let mut names = Vec::new();
    let mut read = |name: &str| {
        names.push(name.to_string());
        u.files
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no blob {name}"))
    };
    let got = parse(UnitKind::Registry, &members, opts, &mut read)
        .map(|l| l.expect("a registry image is always this component's"));
    if let Err(e) = &got {
        assert_one_line(e);
    }
    (got, names)
}

/// Data-driven check of a registry image: `Ok(n)` wants `n` layers (each
/// named `blobs/sha256/<its digest>`), `Err(s)` an error containing `s`.
fn check_registry(u: &Unit, opts: &ManifestOptions, expected: Result<usize, &str>) {
    let (got, names) = run_registry(u, opts);
    // Nothing is read but the reference's document and objects by digest.
    for n in &names {
        let by_digest = ["manifests/sha256/", "blobs/sha256/"]
            .iter()
            .any(|p| n.strip_prefix(p).is_some_and(is_hex64));
        assert!(n == "manifest" || by_digest, "read {n}");
    }
    match (got, expected) {
        (Ok(l), Ok(n)) => {
            assert_eq!(l.format, "registry");
            assert_eq!(l.layers.len(), n, "{l:?}");
            for l in &l.layers {
                let d = l.digest.as_deref().unwrap();
                assert_eq!(l.member, format!("blobs/sha256/{}", &d[7..]));
                // A layer is fetched later, by the host: never read here.
                assert!(!names.contains(&l.member), "{names:?}");
            }
        }
        (Err(e), Err(sub)) => assert!(e.contains(sub), "error {e:?} lacks {sub:?}"),
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

#[test]
fn registry_images_by_manifest_or_index() {
    let opts = ManifestOptions::default();
    let u = oci(&[GZ, TAR, ZST]);
    // By manifest: its layers, config and digests.
    let (l, names) = run_registry(&registry(&u, &blob(200)), &opts);
    let l = l.unwrap();
    assert_eq!(names, ["manifest".to_string(), blob(100)]);
    assert_eq!(l.config_digest, Some(format!("sha256:{}", hex(100))));
    assert_eq!(
        l.layers.iter().map(|l| l.media).collect::<Vec<_>>(),
        [LayerMedia::Gzip, LayerMedia::Tar, LayerMedia::Zstd]
    );
    assert_eq!(l.layers[1].diff_id, Some(format!("sha256:{}", hex(1002))));
    assert_eq!(l.layers[2].size, Some(12));
    // By index (without a mediaType: told by its `manifests`): the
    // manifest is read by digest from the manifests.
    let (l2, names) = run_registry(&registry(&u, "index.json"), &opts);
    assert_eq!(l2.unwrap(), l);
    assert_eq!(
        names,
        [
            "manifest".to_string(),
            format!("manifests/sha256/{}", hex(200)),
            blob(100)
        ]
    );

    // Docker schema 2: a manifest list choosing the platform's manifest.
    let d = edit_manifest(&u, OCI_MANIFEST, DOCKER_V2);
    let d = edit_manifest(
        &d,
        OCI_CONFIG,
        "application/vnd.docker.container.image.v1+json",
    );
    let entries = [
        platform_desc(&d, 300, "linux", "arm64", Some("v8")).replace(OCI_MANIFEST, DOCKER_V2),
        platform_desc(&d, 200, "linux", "amd64", None).replace(OCI_MANIFEST, DOCKER_V2),
    ];
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST_V2}","manifests":[{}]}}"#,
        entries.join(",")
    );
    let listed = registry(&d, &blob(200)).with("manifest", list.clone());
    check_registry(&listed, &opts, Ok(3));
    check_registry(&registry(&d, &blob(200)), &opts, Ok(3));
    // Another platform's manifest is not in this registry: it is asked for.
    let arm = ManifestOptions {
        architecture: "arm64".into(),
        arch_variant: Some("v8".into()),
        ..ManifestOptions::default()
    };
    check_registry(&listed, &arm, Err("no blob manifests/sha256/"));
    let riscv = ManifestOptions {
        architecture: "riscv64".into(),
        ..ManifestOptions::default()
    };
    check_registry(&listed, &riscv, Err("has no linux/riscv64 image"));
}

#[test]
fn registry_rejections() {
    let opts = ManifestOptions::default();
    let u = oci(&[GZ]);
    let good = registry(&u, &blob(200));
    check_registry(&good, &opts, Ok(1));
    for (image, why) in [
        // The config is not the size the manifest says.
        (
            good.clone().with(&blob(100), b"{}".to_vec()),
            "config: read 2 bytes but the member is listed as",
        ),
        (good.clone().without(&blob(100)), "config: cannot read: no blob"),
        (
            good.clone().with(
                "manifest",
                r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#,
            ),
            "schema 1",
        ),
        (
            good.clone().with(
                "manifest",
                r#"{"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws","fsLayers":[]}"#,
            ),
            "schema 1",
        ),
        (
            good.clone()
                .with("manifest", r#"{"mediaType":"text/plain","config":{}}"#),
            "media type `text/plain` is not an image manifest or index",
        ),
        (good.clone().with("manifest", "[1]"), "manifest: "),
        (good.clone().with("manifest", ""), "manifest: "),
        (
            good.clone().with(
                "manifest",
                format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":null}}"#),
            ),
            "index: `manifests` is missing or null",
        ),
        (
            good.clone().with(
                "manifest",
                format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":[]}}"#),
            ),
            "index lists no manifests",
        ),
        (
            good.clone().with(
                "manifest",
                format!(
                    r#"{{"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"sha512:{}","size":1}}]}}"#,
                    "ab".repeat(64)
                ),
            ),
            "only sha256",
        ),
    ] {
        check_registry(&image, &opts, Err(why));
    }
    // A foreign layer is not fetched from its `urls`.
    let foreign = registry(
        &edit_manifest(
            &u,
            &format!(r#""digest":"sha256:{}","size":10}}"#, hex(1)),
            &format!(
                r#""digest":"sha256:{}","size":10,"urls":["http://elsewhere/x"]}}"#,
                hex(1)
            ),
        ),
        &blob(200),
    );
    check_registry(&foreign, &opts, Err("foreign layer"));
    // An index that names itself is a cycle, however deep the options go.
    let index = format!(
        r#"{{"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        desc(OCI_INDEX, 7, 100)
    );
    // Three digits either way: the size is the document's own.
    let index = index.replace(r#""size":100"#, &format!(r#""size":{}"#, index.len()));
    let deep = ManifestOptions {
        max_index_depth: 4,
        ..ManifestOptions::default()
    };
    let cyclic = good
        .clone()
        .with("manifest", index.clone())
        .with(&format!("manifests/sha256/{}", hex(7)), index);
    check_registry(&cyclic, &deep, Err("index cycle"));
}
