//! A whole registry (`registry://HOST`) listed: against a real registry
//! that pages its catalog one repository at a time, and against scripted
//! registries whose lists are hostile.

use super::source::RegistrySource;
use super::tests::support::start_with;
use super::tests::{http, push, scripted};
use crate::core::names::Discovery;
use crate::source::{Source, SourceError};

/// A whole registry's source, its listing step cached in `cache`.
fn whole(host: &str, cache: &std::path::Path) -> RegistrySource {
    RegistrySource::new(
        &format!("registry://{host}?plain-http"),
        &Default::default(),
        cache,
    )
    .unwrap()
}

/// A discovery as `KEY NAME` per unit (sorted) and `KEY: REASON` per
/// rejection.
fn shown(d: &Discovery) -> (Vec<String>, Vec<String>) {
    let mut units: Vec<String> = d
        .units
        .iter()
        .map(|u| format!("{} {}", u.objects[0].key, u.name))
        .collect();
    units.sort();
    let rejected = d
        .rejected
        .iter()
        .map(|r| format!("{}: {}", r.key, r.reason))
        .collect();
    (units, rejected)
}

#[test]
fn a_whole_registry_is_every_tag_of_every_repository_page_by_page() {
    // One repository per catalog page: the listing follows `Link`.
    let r = start_with(tempfile::tempdir().unwrap(), "catalog:\n  maxentries: 1\n");
    for reference in ["team/api:v1", "team/api:v2", "py:3.11", "z/last:latest"] {
        push(&r, reference, None);
    }
    let cache = tempfile::tempdir().unwrap();
    let src = whole(&r.host, cache.path());
    assert_eq!(src.uri(), format!("registry://{}?plain-http", r.host));
    let d = src.discover(100).unwrap();
    assert_eq!(
        shown(&d),
        (
            vec![
                "py:3.11 py_3.11".to_string(),
                "team/api:v1 team_api_v1".to_string(),
                "team/api:v2 team_api_v2".to_string(),
                "z/last:latest z_last_latest".to_string(),
            ],
            vec![]
        )
    );
    // Each resolved to its manifest's digest (the same image pushed four
    // times), which a stat of its key says too.
    let stamp = &d.units[0].objects[0].stamp;
    assert!(crate::core::chain::is_sha256_digest(stamp), "{stamp}");
    for u in &d.units {
        assert_eq!(&u.objects[0].stamp, stamp);
        assert_eq!(&src.stat(&u.objects[0].key).unwrap().stamp, stamp);
    }
    // Keys outside the grammar name nothing.
    for key in ["team/api", "Team/api:v1", "team/api@sha256:00", "x:y:z"] {
        assert!(
            matches!(src.stat(key), Err(SourceError::NotFound(_))),
            "{key}"
        );
    }
    // Bounded: one image more than asked for, then the listing stops.
    for max in [1, 2] {
        let mut d = src.discover(max).unwrap();
        assert_eq!(d.units.len(), max + 1, "max {max}");
        d.bound(max, "why");
        assert_eq!(d.units.len(), max);
        assert_eq!(d.rejected.len(), 1);
    }
}

#[test]
fn hostile_lists_are_refused_or_their_bad_names_rejected() {
    let digest = format!("sha256:{}", "d".repeat(64));
    let d2 = digest.clone();
    let (port, _) = scripted(move |head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        let json = |b: &str| http("200 OK", &[], b);
        match path {
            "/v2/_catalog" => http(
                "200 OK",
                &[r#"Link: </v2/_catalog?last=ok>; rel="next""#.into()],
                r#"{"repositories":["ok","BAD/Name"]}"#,
            ),
            "/v2/_catalog?last=ok" => json(r#"{"repositories":["gone"]}"#),
            "/v2/ok/tags/list" => json(r#"{"name":"ok","tags":["v1","no good"]}"#),
            "/v2/ok/manifests/v1" => http(
                "200 OK",
                &[
                    format!("Docker-Content-Digest: {d2}"),
                    "Content-Type: application/vnd.oci.image.manifest.v1+json".into(),
                ],
                "",
            ),
            _ => http("404 Not Found", &[], ""),
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{port}");
    let d = whole(&host, cache.path()).discover(10).unwrap();
    let (units, rejected) = shown(&d);
    assert_eq!(units, ["ok:v1 ok_v1"]);
    assert_eq!(d.units[0].objects[0].stamp, digest);
    assert_eq!(
        rejected,
        [
            "_catalog: `BAD/Name` is not a repository name of the distribution specification",
            "ok: `no good` is not a tag name of the distribution specification",
            "gone: its tags cannot be listed: registry 127.0.0.1:PORT: GET /v2/gone/tags/list: not found (404)"
                .replace("PORT", &port.to_string())
                .as_str(),
        ]
    );

    // Lists that would lead the host elsewhere, or on forever.
    for (first, why) in [
        (
            r#"Link: <http://127.0.0.1:9/v2/_catalog?last=a>; rel="next""#,
            "GET /v2/_catalog: the next page is not /v2/_catalog on this registry",
        ),
        (
            r#"Link: </v2/a/tags/list?x>; rel="next""#,
            "GET /v2/_catalog: the next page is not /v2/_catalog on this registry",
        ),
        (
            r#"Link: </v2/_catalog?again>; rel="next""#,
            "GET /v2/_catalog?again: a page that names nothing new links to another",
        ),
        (
            r#"Link: <_catalog>; rel="next""#,
            "the registry's `Link` header names a next page that is not a `/v2/` path",
        ),
    ] {
        let link = first.to_string();
        let (port, heads) = scripted(move |_| {
            http(
                "200 OK",
                std::slice::from_ref(&link),
                r#"{"repositories":["a"]}"#,
            )
        });
        let e = whole(&format!("127.0.0.1:{port}"), cache.path())
            .discover(3)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{first}: {e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(heads.lock().unwrap().len() <= 5, "{first}: bounded");
    }
    // A page that names nothing cannot link to another.
    let (port, _) = scripted(|_| {
        http(
            "200 OK",
            &[r#"Link: </v2/_catalog?last=x>; rel="next""#.into()],
            r#"{"repositories":[]}"#,
        )
    });
    let e = whole(&format!("127.0.0.1:{port}"), cache.path())
        .discover(3)
        .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("a page that names nothing new links to another"),
        "{e}"
    );
}

/// Names the default mapping makes the same are served under neither; a
/// registry listing many names outside the grammar is said in a bounded
/// number of lines.
#[test]
fn clashing_names_and_many_bad_names() {
    let digest = format!("sha256:{}", "e".repeat(64));
    let bad: Vec<String> = (0..100).map(|i| format!("\"BAD{i}\"")).collect();
    let catalog = format!(
        r#"{{"repositories":["team/app","team_app","z",{}]}}"#,
        bad.join(",")
    );
    let (port, _) = scripted(move |head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        let json = |b: &str| http("200 OK", &[], b);
        match path {
            "/v2/_catalog" => json(&catalog),
            "/v2/team/app/tags/list" => json(r#"{"name":"team/app","tags":["v1"]}"#),
            "/v2/team_app/tags/list" => json(r#"{"name":"team_app","tags":["v1"]}"#),
            "/v2/z/tags/list" => json(r#"{"name":"z","tags":["v1"]}"#),
            p if p.ends_with("/manifests/v1") => {
                http("200 OK", &[format!("Docker-Content-Digest: {digest}")], "")
            }
            _ => http("404 Not Found", &[], ""),
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let d = whole(&format!("127.0.0.1:{port}"), cache.path())
        .discover(1000)
        .unwrap();
    let (units, rejected) = shown(&d);
    assert_eq!(units, ["z:v1 z_v1"]);
    for key in ["team/app:v1", "team_app:v1"] {
        assert!(
            rejected.iter().any(|r| r.starts_with(&format!("{key}: another repository and tag of the registry make the same image name `team_app_v1`"))),
            "{rejected:?}"
        );
    }
    let bad_lines = rejected
        .iter()
        .filter(|r| r.starts_with("_catalog: "))
        .count();
    // The listing step says 16 of a page's refusals; the rest are counted.
    assert_eq!(bad_lines, 17, "{rejected:?}");
    assert!(
        rejected.contains(
            &"_catalog: 84 more names the registry lists are not of the distribution specification"
                .to_string()
        ),
        "{rejected:?}"
    );
}
