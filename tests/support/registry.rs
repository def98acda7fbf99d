//! A real registry for tests: Debian's `docker-registry` (distribution
//! 2.8) on 127.0.0.1, anonymous or behind htpasswd auth, and `skopeo copy`
//! to push images to it. Shared by the registry client's unit tests and
//! the end-to-end tests (included with `#[path]`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry process of the test's own; killed when dropped.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    pub dir: tempfile::TempDir,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a registry; with `user`, behind htpasswd auth for that user and
/// password.
pub fn start(user: Option<(&str, &str)>) -> TestRegistry {
    let dir = tempfile::tempdir().unwrap();
    let mut auth = String::new();
    if let Some((u, p)) = user {
        let out = Command::new("htpasswd")
            .args(["-Bbn", u, p])
            .output()
            .expect("htpasswd (apache2-utils; deploy/install-deps.sh installs it)");
        assert!(out.status.success());
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, &out.stdout).unwrap();
        auth = format!(
            "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            file.display()
        );
    }
    start_with(dir, &auth)
}

/// Starts a registry with `auth` (its configuration's `auth:` section, or
/// nothing: anonymous).
pub fn start_with(dir: tempfile::TempDir, auth: &str) -> TestRegistry {
    let port = free_port();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
        dir.path().join("data").display()
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (deploy/install-deps.sh installs it)");
    let host = format!("127.0.0.1:{port}");
    let r = TestRegistry {
        child,
        host: host.clone(),
        dir,
    };
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&host).is_err() {
        assert!(Instant::now() < until, "the registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    r
}

/// Pushes `from` (skopeo's transport:reference, such as
/// `docker-archive:PATH` or `oci:DIR:TAG`) to `reference` on `r`, as
/// `creds` (`user:password`) if given; `format`: `oci` or `v2s2` (the
/// default: as the source is).
pub fn push(
    r: &TestRegistry,
    from: &str,
    reference: &str,
    creds: Option<&str>,
    format: Option<&str>,
) {
    let mut c = Command::new("skopeo");
    c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if let Some(creds) = creds {
        c.args(["--dest-creds", creds]);
    }
    if let Some(f) = format {
        c.args(["--format", f]);
    }
    let out = c
        .arg(from)
        .arg(format!("docker://{}/{reference}", r.host))
        .output()
        .expect("skopeo (deploy/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo copy {from} {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- the bearer-token flow: a token server of the test's own ----

/// A key and its self-signed certificate (openssl), which the registry
/// trusts for tokens.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    cert_der: Vec<u8>,
    pub cert_pem: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn signing_key(dir: &Path) -> SigningKey {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p("key.pem"),
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &p("key.pem"),
        "-outform",
        "DER",
        "-out",
        &p("key.p8"),
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &p("key.pem"),
        "-subj",
        "/CN=tarpool-test-tokens",
        "-days",
        "2",
        "-out",
        &p("cert.pem"),
    ]);
    openssl(&[
        "x509",
        "-in",
        &p("cert.pem"),
        "-outform",
        "DER",
        "-out",
        &p("cert.der"),
    ]);
    SigningKey {
        pkcs8: std::fs::read(p("key.p8")).unwrap(),
        cert_der: std::fs::read(p("cert.der")).unwrap(),
        cert_pem: dir.join("cert.pem"),
    }
}

/// A JWT the registry accepts: ES256, the certificate in `x5c`, granting
/// `actions` on `name` of type `typ` (`repository`, or `registry` for the
/// catalog).
fn token(key: &SigningKey, typ: &str, name: &str, actions: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&key.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": "test-issuer", "sub": "anna", "aud": "test-registry",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{name}-{actions}"),
        "access": [{ "type": typ, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }],
    });
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &key.pkcs8,
        &rng,
    )
    .unwrap();
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", b64.encode(sig.as_ref()))
}

/// The refresh token (an `identitytoken`) the token server takes.
pub const REFRESH_TOKEN: &str = "tarpool-test-refresh-token";

/// The token server: HTTP Basic for `user_password` (`user:password`) on a
/// GET, or OAuth2's refresh-token grant of [`REFRESH_TOKEN`] on a POST
/// (400 for another); a token for the scope asked (`access_token` to a
/// POST); `wrong` answers grant another repository instead (a token the
/// registry refuses).
pub struct TokenServer {
    pub port: u16,
    /// Tokens asked for.
    pub asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub wrong: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub fn token_server(key: SigningKey, user_password: &str) -> TokenServer {
    use std::io::{BufRead as _, Write as _};
    use std::sync::atomic::Ordering::SeqCst;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let wrong = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (a, w) = (asked.clone(), wrong.clone());
    let user_password = user_password.to_string();
    std::thread::spawn(move || {
        use base64::Engine as _;
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(&user_password)
        );
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let target = line.split(' ').nth(1).unwrap_or("").to_string();
            let post = line.starts_with("POST ");
            let mut authorized = false;
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    authorized |= k.eq_ignore_ascii_case("authorization") && v.trim() == good;
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            a.fetch_add(1, SeqCst);
            let mut body = vec![0u8; length];
            std::io::Read::read_exact(&mut reader, &mut body).unwrap();
            let url = url::Url::parse(&format!("http://x{target}")).unwrap();
            let params: Vec<(String, String)> = if post {
                url::form_urlencoded::parse(&body).into_owned().collect()
            } else {
                url.query_pairs().into_owned().collect()
            };
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let scope = param("scope");
            if post {
                authorized = param("grant_type") == "refresh_token"
                    && param("refresh_token") == REFRESH_TOKEN;
            }
            let mut parts = scope.splitn(3, ':');
            let (typ, name, actions) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            let answer = if !authorized && post {
                let body = r#"{"error":"invalid_grant"}"#;
                format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else if !authorized {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            } else {
                let name = if w.load(SeqCst) > 0 {
                    w.fetch_sub(1, SeqCst);
                    "other/repository"
                } else {
                    name
                };
                let token = token(&key, typ, name, actions);
                let body = if post {
                    serde_json::json!({ "access_token": token, "expires_in": 300 })
                } else {
                    serde_json::json!({ "token": token, "expires_in": 300 })
                }
                .to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    TokenServer { port, asked, wrong }
}

/// A registry whose auth is the bearer flow through `tokens`, trusting
/// `cert`.
pub fn start_with_tokens(tokens: &TokenServer, cert: &Path) -> TestRegistry {
    start_with(
        tempfile::tempdir().unwrap(),
        &format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
        tokens.port,
        cert.display()
    ),
    )
}
