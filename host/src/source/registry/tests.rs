//! The registry client against a real registry: Debian's `docker-registry`
//! (distribution 2.8) started here on 127.0.0.1, anonymous or with htpasswd
//! auth or a token server of the test's own, holding an image `skopeo copy`
//! pushed to it (`tests/support/registry.rs`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use http_body_util::BodyExt as _;
use sha2::{Digest as _, Sha256};

use super::answers::{challenges, token_answer, RegistryError};
use super::auth::Credential;
use super::client::Registry;
use crate::core::registry;

#[path = "../../../../tests/support/registry.rs"]
pub(super) mod support;
use support::{free_port, signing_key, start, start_with_tokens, token_server, TestRegistry};

/// Pushes the example bucket's docker archive to `reference` on `r`.
pub(super) fn push(r: &TestRegistry, reference: &str, creds: Option<&str>) {
    let archive =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/example-bucket/images/dockersave.tar");
    support::push(
        r,
        &format!("docker-archive:{}", archive.display()),
        reference,
        creds,
        None,
    );
}

fn client(r: &TestRegistry, credential: Option<Credential>) -> Registry {
    let spec = registry::parse(&format!("registry://{}?plain-http", r.host)).unwrap();
    Registry::new(&spec, credential).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn basic(user: &str, password: &str) -> Option<Credential> {
    Some(Credential::Basic {
        user: user.into(),
        password: password.into(),
    })
}

async fn body(b: hyper::body::Incoming) -> Vec<u8> {
    b.collect().await.unwrap().to_bytes().to_vec()
}

/// The layer digests a schema 2 manifest names (the test reads the JSON;
/// the service never does).
fn layers_of(manifest: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn manifests_and_blobs_come_raw_and_verified() {
    let r = start(None);
    push(&r, "team/app:v1", None);
    let c = client(&r, None);
    rt().block_on(async {
        let head = c.manifest_head("team/app", "v1").await.unwrap();
        let m = c.manifest("team/app", "v1", 4 << 20).await.unwrap();
        assert_eq!(head.digest.as_deref(), Some(m.digest.as_str()));
        assert_eq!(
            m.media_type,
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(head.size, Some(m.bytes.len() as u64));
        // By digest, the same bytes.
        let again = c.manifest("team/app", &m.digest, 4 << 20).await.unwrap();
        assert_eq!(again.bytes, m.bytes);
        // A cap below the manifest's size refuses it.
        let e = c.manifest("team/app", "v1", 10).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "GET /v2/team/app/manifests/v1: more than 10 bytes"
        );

        let layer = &layers_of(&m.bytes)[0];
        let b = c.blob("team/app", layer, 0).await.unwrap();
        assert_eq!(b.from, 0);
        let whole = body(b.body).await;
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&whole))),
            *layer
        );
        // Resumed from byte 100: the rest, and only the rest.
        let b = c.blob("team/app", layer, 100).await.unwrap();
        assert_eq!(b.from, 100);
        assert_eq!(body(b.body).await, whole[100..]);

        // What is not there is a 404, in one line.
        for (e, text) in [
            (
                c.manifest_head("team/app", "v2").await.unwrap_err(),
                "HEAD /v2/team/app/manifests/v2: not found (404)",
            ),
            (
                c.manifest("team/nothing", "v1", 1 << 20).await.unwrap_err(),
                "GET /v2/team/nothing/manifests/v1: not found (404)",
            ),
        ] {
            assert_eq!(e.to_string(), text);
            assert!(!e.retryable());
        }
        let missing = format!("sha256:{}", "0".repeat(64));
        let e = c.blob("team/app", &missing, 0).await.unwrap_err();
        assert!(matches!(e, RegistryError::NotFound(_)), "{e}");
    });
}

#[test]
fn basic_auth_takes_the_configured_password_and_refuses_a_wrong_one() {
    let r = start(Some(("anna", "s3cret")));
    push(&r, "team/app:v1", Some("anna:s3cret"));
    rt().block_on(async {
        let ok = client(&r, basic("anna", "s3cret"));
        let m = ok.manifest("team/app", "v1", 4 << 20).await.unwrap();
        // After the first challenge, Basic is sent from the start.
        ok.manifest_head("team/app", &m.digest).await.unwrap();

        let e = client(&r, None).manifest_head("team/app", "v1").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "HEAD /v2/team/app/manifests/v1: unauthorized (401): the registry wants a user and password; none is configured for it"
        );
        let e = client(&r, basic("anna", "wrong"))
            .manifest("team/app", "v1", 4 << 20)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "GET /v2/team/app/manifests/v1: unauthorized (401): the registry refused the configured user and password"
        );
        assert!(!e.to_string().contains("wrong") && !e.to_string().contains("s3cret"));
        assert!(!e.retryable());
    });
}

#[test]
fn a_registry_that_is_not_there_is_a_retryable_transport_error() {
    let port = free_port();
    let spec = registry::parse(&format!("registry://127.0.0.1:{port}/a?plain-http")).unwrap();
    let c = Registry::new(&spec, None).unwrap();
    let e = rt().block_on(c.manifest_head("a", "latest")).unwrap_err();
    assert!(matches!(e, RegistryError::Transport(..)), "{e}");
    assert!(e.retryable());
    assert!(!e.to_string().contains('\n'));
    // HTTPS unless asked: the same registry over TLS fails to connect.
    let spec = registry::parse(&format!("registry://127.0.0.1:{port}/a")).unwrap();
    let e = rt()
        .block_on(
            Registry::new(&spec, None)
                .unwrap()
                .manifest_head("a", "latest"),
        )
        .unwrap_err();
    assert!(matches!(e, RegistryError::Transport(..)), "{e}");
}

#[test]
fn challenges_and_token_answers() {
    let c = challenges(
        r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/api:pull,push""#,
    )
    .unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].scheme, "bearer");
    assert_eq!(
        c[0].params,
        [
            (
                "realm".to_string(),
                "https://auth.example.com/token".to_string()
            ),
            ("service".to_string(), "registry.example.com".to_string()),
            (
                "scope".to_string(),
                "repository:team/api:pull,push".to_string()
            ),
        ]
    );
    let c = challenges(r#"Basic realm="x", Bearer realm="y""#).unwrap();
    assert_eq!(
        c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
        ["basic", "bearer"]
    );
    assert!(challenges("Bearer realm=\"unterminated").is_err());

    for (answer, expected) in [
        (r#"{"token":"abc","expires_in":120}"#, Ok(("abc", 120))),
        (r#"{"access_token":"xyz"}"#, Ok(("xyz", 60))),
        (r#"{"token":"abc","expires_in":86400}"#, Ok(("abc", 300))),
        (r#"{"token":"abc","expires_in":0}"#, Ok(("abc", 1))),
        (
            r#"{"token":""}"#,
            Err("the token server gave no usable token"),
        ),
        (
            r#"{"token":"a b"}"#,
            Err("the token server gave no usable token"),
        ),
        ("<html>", Err("the token server's answer is not a token")),
    ] {
        let got = token_answer(answer.as_bytes()).map(|(t, d)| (t, d.as_secs()));
        let expected = expected
            .map(|(t, d)| (t.to_string(), d))
            .map_err(str::to_string);
        assert_eq!(got, expected, "{answer}");
    }
}

#[test]
fn a_ca_file_must_hold_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let empty: PathBuf = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let spec = registry::parse(&format!("registry://r.io/a?ca-file={}", empty.display())).unwrap();
    let e = Registry::new(&spec, None).unwrap_err();
    assert_eq!(
        e,
        format!("ca-file {}: no certificate in it", empty.display())
    );
    let spec = registry::parse("registry://r.io/a?ca-file=/nonexistent.pem").unwrap();
    assert!(Registry::new(&spec, None)
        .unwrap_err()
        .starts_with("ca-file /nonexistent.pem: "));
}

// ---- the bearer-token flow, against a token server of the test's own ----

#[test]
fn bearer_tokens_are_fetched_cached_and_fetched_again_when_refused() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key(dir.path());
    let cert = key.cert_pem.clone();
    let tokens = token_server(key, "anna:s3cret");
    let r = start_with_tokens(&tokens, &cert);
    push(&r, "team/app:v1", Some("anna:s3cret"));
    rt().block_on(async {
        let c = client(&r, basic("anna", "s3cret"));
        let before = tokens.asked.load(SeqCst);
        let m = c.manifest("team/app", "v1", 4 << 20).await.unwrap();
        c.manifest_head("team/app", &m.digest).await.unwrap();
        let layer = &layers_of(&m.bytes)[0];
        let b = c.blob("team/app", layer, 0).await.unwrap();
        let whole = body(b.body).await;
        assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&whole))), *layer);
        // One token for the three requests of one scope.
        assert_eq!(tokens.asked.load(SeqCst) - before, 1);

        // A token the registry refuses: the request fails, and the next one
        // fetches a new token instead of sending the refused one again.
        let c = client(&r, basic("anna", "s3cret"));
        tokens.wrong.store(1, SeqCst);
        let e = c.manifest_head("team/app", "v1").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "HEAD /v2/team/app/manifests/v1: unauthorized (401): the registry refused the token its token server gave"
        );
        let before = tokens.asked.load(SeqCst);
        c.manifest_head("team/app", "v1").await.unwrap();
        assert_eq!(tokens.asked.load(SeqCst) - before, 1);

        // An identity token (OAuth2 refresh token) is exchanged for an
        // access token: a POST of the refresh-token grant.
        let c = client(&r, Some(Credential::IdentityToken(support::REFRESH_TOKEN.into())));
        let before = tokens.asked.load(SeqCst);
        c.manifest_head("team/app", "v1").await.unwrap();
        assert_eq!(tokens.asked.load(SeqCst) - before, 1);

        // The token server's refusals, in one line and without the secret.
        for (cred, why) in [
            (
                Some(Credential::IdentityToken("not-the-token".into())),
                "the token server refused the configured identity token",
            ),
            (basic("anna", "wrong"), "the token server refused the configured user and password"),
            (None, "the token server wants a user and password; none is configured for this registry"),
        ] {
            let e = client(&r, cred).manifest("team/app", "v1", 4 << 20).await.unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("GET /v2/team/app/manifests/v1: unauthorized (401): {why}")
            );
        }
    });
}

// ---- what a hostile registry cannot make the client do ----

pub(super) type Heads = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A scripted HTTP server: each request's head is recorded, and `answer`
/// gives the response to it.
pub(super) fn scripted(answer: impl Fn(&str) -> String + Send + 'static) -> (u16, Heads) {
    use std::io::{Read as _, Write as _};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads: Heads = Default::default();
    let h = heads.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                buf.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            h.lock().unwrap().push(head.clone());
            let _ = conn.write_all(answer(&head).as_bytes());
        }
    });
    (port, heads)
}

pub(super) fn http(status: &str, headers: &[String], body: &str) -> String {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    format!("{r}\r\n{body}")
}

#[test]
fn credentials_never_follow_a_redirect_to_another_host() {
    // B: where the registry sends its blobs; it refuses with a challenge of
    // its own, which must not be answered.
    let (b_port, b_heads) = scripted(|_| {
        http(
            "401 Unauthorized",
            &[r#"WWW-Authenticate: Bearer realm="http://127.0.0.1:9/steal""#.to_string()],
            "",
        )
    });
    // A: the registry; it wants Basic, then redirects to B.
    let (a_port, a_heads) = scripted(move |head| {
        if head
            .to_ascii_lowercase()
            .contains("\r\nauthorization: basic ")
        {
            http(
                "307 Temporary Redirect",
                &[format!("Location: http://127.0.0.1:{b_port}/blob")],
                "",
            )
        } else {
            http(
                "401 Unauthorized",
                &[r#"WWW-Authenticate: Basic realm="r""#.to_string()],
                "",
            )
        }
    });
    let spec = registry::parse(&format!("registry://127.0.0.1:{a_port}?plain-http")).unwrap();
    let c = Registry::new(&spec, basic("anna", "s3cret")).unwrap();
    let digest = format!("sha256:{}", "a".repeat(64));
    let e = rt().block_on(c.blob("team/app", &digest, 0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("GET /v2/team/app/blobs/{digest}: unauthorized (401): a host the registry redirected to refused the request")
    );
    assert_eq!(
        a_heads.lock().unwrap().len(),
        2,
        "A: challenged, then redirected"
    );
    let b = b_heads.lock().unwrap();
    assert_eq!(
        b.len(),
        1,
        "B is asked once, and its challenge is not answered"
    );
    assert!(
        !b[0].to_ascii_lowercase().contains("authorization"),
        "{}",
        b[0]
    );
}

#[test]
fn bad_names_and_answers_are_refused() {
    let (port, heads) = scripted(|head| {
        if head.starts_with("HEAD") {
            // A digest other than the one asked for.
            http(
                "200 OK",
                &[format!("Docker-Content-Digest: sha256:{}", "b".repeat(64))],
                "",
            )
        } else {
            // Bytes 10-19 of 100, asked for 10 to the end.
            http(
                "206 Partial Content",
                &["Content-Range: bytes 10-19/100".to_string()],
                "0123456789",
            )
        }
    });
    let spec = registry::parse(&format!("registry://127.0.0.1:{port}?plain-http")).unwrap();
    let c = Registry::new(&spec, None).unwrap();
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    rt().block_on(async {
        // Nothing outside the grammar reaches a URL.
        for (repo, reference) in [
            ("team/app?x=1", "v1"),
            ("team/../v2", "v1"),
            ("team/app", "v1#x"),
            ("team/app", "sha512:00"),
        ] {
            let e = c.manifest_head(repo, reference).await.unwrap_err();
            assert!(
                matches!(e, RegistryError::BadRequest(_)),
                "{repo} {reference}: {e}"
            );
        }
        let e = c.blob("team/app", "v1", 0).await.unwrap_err();
        assert!(matches!(e, RegistryError::BadRequest(_)), "{e}");
        assert!(heads.lock().unwrap().is_empty(), "no request was sent");

        let e = c.manifest_head("team/app", &d('a')).await.unwrap_err();
        assert!(
            e.to_string().ends_with(&format!(
                "asked for {}, the registry says {}",
                d('a'),
                d('b')
            )),
            "{e}"
        );
        let e = c.blob("team/app", &d('a'), 10).await.unwrap_err();
        assert!(
            e.to_string()
                .ends_with("asked for bytes from 10 to the end, got another range"),
            "{e}"
        );
        // A 206 to a request without a range is refused too.
        let e = c.blob("team/app", &d('a'), 0).await.unwrap_err();
        assert!(e.to_string().ends_with("got another range"), "{e}");
    });
}
