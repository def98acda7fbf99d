use super::*;

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
    fn run(&self, unit: UnitKind) -> Result<ImageLayout, String> {
        self.run_members(unit, &self.members())
    }
    fn run_members(&self, unit: UnitKind, members: &[Member]) -> Result<ImageLayout, String> {
        let mut read = |name: &str| {
            self.files
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no member {name}"))
        };
        let got = parse(unit, members, &mut read);
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
    match (unit.run(kind), expected) {
        (Ok(l), Ok(n)) => assert_eq!(l.layers.len(), n, "{l:?}"),
        (Err(e), Err(sub)) => assert!(e.contains(sub), "error {e:?} lacks {sub:?}"),
        (got, want) => panic!("got {got:?}, want {want:?}"),
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
    assert_eq!(l.format, ImageFormat::AdHoc);
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
    check(&adhoc(&["+1.tar"]), p, Err("`+1.tar`"));
    check(&adhoc(&["1.tar.gz"]), p, Err("`1.tar.gz`"));
    check(&adhoc(&[".tar"]), p, Err("`.tar`"));
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
    assert_eq!(l.format, ImageFormat::OciLayout);
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
        ImageFormat::OciArchive
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
    let e = parse(a, &u.members(), &mut read).unwrap_err();
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
    check(&twice, a, Err("only one level of nesting"));
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
    assert_eq!(l.format, ImageFormat::DockerArchive);
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

    // Both markers: OCI wins only with oci-layout and index.json.
    let both = oci(&[GZ]).with("manifest.json", new.files["manifest.json"].clone());
    assert_eq!(both.run(a).unwrap().format, ImageFormat::OciArchive);
    let half = new
        .clone()
        .with("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#);
    assert_eq!(half.run(a).unwrap().format, ImageFormat::DockerArchive);
    // docker-archive must be one object; as a prefix its manifest.json is junk.
    check(&new, UnitKind::Prefix, Err("prefix member `blobs/sha256/"));
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
        Err("duplicate field `Config`"),
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
    assert_eq!(l.format, ImageFormat::SingleLayer);
    assert_eq!(l.layers.len(), 1);
    assert_eq!(l.layers[0].member, "");
    assert_eq!(l.layers[0].media, LayerMedia::Tar);
    assert_eq!(
        Unit::default().run(UnitKind::Archive).unwrap().format,
        ImageFormat::SingleLayer
    );
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
        Err("manifest.json: EOF"),
    );
    let closed = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
    check(
        &d.clone().with("manifest.json", closed),
        a,
        Err("manifest.json: invalid type: sequence"),
    );
    let wide = format!(
        "[{{\"Config\":\"c.json\",\"Layers\":[],\"x\":{}1{}}}]",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    check(
        &d.clone().with("manifest.json", wide),
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
    let e = parse(a, &members, &mut read).unwrap_err();
    assert!(
        e.contains("oci-layout: read 3 bytes but the member is listed as 1 bytes"),
        "{e}"
    );
}
