use std::collections::HashMap;

use super::*;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex_of_bytes(&Sha256::digest(b)))
}

/// A directory-transport layout of one image (a gzip and a zstd layer),
/// or of an index holding it for linux/arm64, as member name → bytes.
fn layout(indexed: bool) -> (HashMap<String, Vec<u8>>, String) {
    let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111","sha256:2222222222222222222222222222222222222222222222222222222222222222"]},"config":{"User":"app","Cmd":["/bin/sh"],"Env":["A=1"]}}"#.to_vec();
    let l1 = format!("sha256:{}", "a".repeat(64));
    let l2 = format!("sha256:{}", "b".repeat(64));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{l1}","size":10}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{l2}","size":20}}]}}"#,
        sha(&config),
        config.len()
    );
    let mut m = HashMap::new();
    m.insert(
        "version".to_string(),
        b"Directory Transport Version: 1.1\n".to_vec(),
    );
    m.insert(hex_of(&sha(&config)).unwrap().to_string(), config.clone());
    if indexed {
        let d = sha(manifest.as_bytes());
        m.insert(
            format!("{}.manifest.json", hex_of(&d).unwrap()),
            manifest.clone().into_bytes(),
        );
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{},"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            manifest.len()
        );
        m.insert("manifest.json".into(), index.into_bytes());
    } else {
        m.insert("manifest.json".into(), manifest.into_bytes());
    }
    (m, sha(&config))
}

fn check(members: &HashMap<String, Vec<u8>>, arch: &str, expected: Result<Option<&str>, &str>) {
    let names: Vec<&str> = members.keys().map(String::as_str).collect();
    let mut read = |n: &str| {
        members
            .get(n)
            .cloned()
            .ok_or_else(|| format!("no member `{n}`"))
    };
    let platform = Platform {
        os: "linux",
        architecture: arch,
        variant: None,
    };
    let got = parse(&names, &mut read, &platform);
    let got = got.map(|l| {
        l.map(|l| {
            let layers: Vec<String> = l
                .layers
                .iter()
                .map(|x| format!("{}:{:?}:{}", &x.member[..4], x.media, &x.diff_id[7..11]))
                .collect();
            format!(
                "{} user={} cmd={:?}",
                layers.join(","),
                l.config.user,
                l.config.cmd
            )
        })
    });
    match (&got, &expected) {
        (Ok(g), Ok(e)) => assert_eq!(g.as_deref(), *e),
        (Err(g), Err(e)) => assert!(g.contains(e), "{g} lacks {e}"),
        _ => panic!("got {got:?}, expected {expected:?}"),
    }
}

#[test]
fn directory_transport_layouts() {
    let want = "aaaa:Detect:1111,bbbb:Zstd:2222 user=app cmd=[\"/bin/sh\"]";
    let (m, _) = layout(false);
    check(&m, "amd64", Ok(Some(want)));
    let (m, _) = layout(true);
    check(&m, "arm64", Ok(Some(want)));
    check(
        &m,
        "amd64",
        Err("the index has no manifest for linux/amd64"),
    );

    // Not this layout: another step's to read.
    let (mut m, _) = layout(false);
    m.remove("version");
    check(&m, "amd64", Ok(None));
    let (mut m, _) = layout(false);
    m.insert("version".into(), b"something else".to_vec());
    check(&m, "amd64", Ok(None));

    // A config that is not the bytes its name says.
    let (mut m, config) = layout(false);
    m.insert(hex_of(&config).unwrap().to_string(), b"{}".to_vec());
    check(&m, "amd64", Err("holds sha256:"));

    // A media type it does not know, JSON that is not a manifest.
    let (mut m, _) = layout(false);
    let text = String::from_utf8(m["manifest.json"].clone()).unwrap();
    m.insert(
        "manifest.json".into(),
        text.replace("tar+zstd", "tar+xz").into_bytes(),
    );
    check(
        &m,
        "amd64",
        Err("a layer of media type `application/vnd.oci.image.layer.v1.tar+xz`"),
    );
    m.insert("manifest.json".into(), b"[1,2]".to_vec());
    check(&m, "amd64", Err("manifest.json: "));
}
