//! A real registry for tests: Debian's `docker-registry` (distribution
//! 2.8) on 127.0.0.1, anonymous or behind htpasswd auth, and `skopeo copy`
//! to push images to it. Shared by the registry client's unit tests and
//! the end-to-end tests (included with `#[path]`).

#![allow(dead_code)]

use std::net::TcpListener;
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
