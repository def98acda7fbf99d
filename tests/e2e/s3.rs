//! The S3 source against a real S3-compatible server process (moto, started
//! per test on a loopback port), with the tests' own fault-injecting proxy
//! (`tests/s3/proxy.py`) between tarpool and the server: it counts requests
//! and cuts, resets, stalls or refuses them.

use crate::harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "tarpool-test";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `%XX`-encodes a key for a request path (keeps `/`).
fn encode(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A moto server on a free loopback port, and optionally the fault proxy.
struct S3 {
    port: u16,
    _server: Proc,
    proxy: Option<(u16, Proc)>,
    dir: tempfile::TempDir,
}

impl S3 {
    fn start() -> S3 {
        let mut dir = tempfile::Builder::new()
            .prefix("tarpool-s3-")
            .tempdir()
            .unwrap();
        for _ in 0..3 {
            let port = free_port();
            let server = Proc(
                Command::new("python3")
                    .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                    .arg(port.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting moto (pip install 'moto[server]')"),
            );
            let mut s3 = S3 {
                port,
                _server: server,
                proxy: None,
                dir,
            };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = s3._server.0.try_wait() {
                    break; // the port was taken: try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let (st, _) = s3.http("PUT", &format!("/{BUCKET}"), b"");
                    assert_eq!(st, 200, "creating the bucket");
                    return s3;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            dir = std::mem::replace(&mut s3.dir, tempfile::tempdir().unwrap());
        }
        panic!("moto did not start");
    }

    fn with_proxy(mut self) -> S3 {
        let mut child = Command::new("python3")
            .arg(repo().join("tests/s3/proxy.py"))
            .arg(self.port.to_string())
            .arg(self.log_path())
            .arg(self.dir.path().join("faults.json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("proxy port");
        self.proxy = Some((port, Proc(child)));
        self
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("requests.log")
    }

    /// One request straight to the server (moto does not check signatures,
    /// but wants an `Authorization` header for some operations).
    fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=00\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let text = String::from_utf8_lossy(&resp);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = match resp.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => resp[i + 4..].to_vec(),
            None => Vec::new(),
        };
        (status, body)
    }

    fn put(&self, key: &str, data: &[u8]) {
        let (st, body) = self.http("PUT", &format!("/{BUCKET}/{}", encode(key)), data);
        assert_eq!(st, 200, "PUT {key:?}: {}", String::from_utf8_lossy(&body));
    }

    fn delete(&self, key: &str) {
        let (st, _) = self.http("DELETE", &format!("/{BUCKET}/{}", encode(key)), b"");
        assert_eq!(st, 204, "DELETE {key}");
    }

    /// Uploads the example bucket's `images/` under `prefix`; returns the keys.
    fn upload_example(&self, prefix: &str, only: Option<&str>) -> Vec<String> {
        let root = example_bucket();
        let mut keys = Vec::new();
        for f in files_under(&root.join("images")) {
            if !f.is_file() {
                continue;
            }
            let rel = f.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
            if only.is_some_and(|o| !rel.starts_with(&format!("images/{o}"))) {
                continue;
            }
            let key = format!("{prefix}{rel}");
            self.put(&key, &std::fs::read(&f).unwrap());
            keys.push(key);
        }
        keys
    }

    fn endpoint(&self) -> String {
        let port = self.proxy.as_ref().map(|p| p.0).unwrap_or(self.port);
        format!("http://127.0.0.1:{port}")
    }

    fn faults(&self, json: &str) {
        std::fs::write(self.dir.path().join("faults.json"), json).unwrap();
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn clear_requests(&self) {
        let _ = std::fs::remove_file(self.log_path());
    }

    /// GETs of object bodies (not listings) seen by the proxy.
    fn body_gets(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|l| l.starts_with(&format!("GET /{BUCKET}/")) && !l.contains("list-type"))
            .collect()
    }
}

fn s3_cmd(env: &Env, s3: &S3, source: &str) -> Command {
    let mut c = env.cmd(&["run", "--once", "--json", "--source", source]);
    c.env("AWS_ENDPOINT_URL", s3.endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/nonexistent/tarpool-test")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/tarpool-test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
    c
}

fn run_s3(env: &Env, s3: &S3, source: &str) -> Output {
    s3_cmd(env, s3, source).output().unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "run failed ({:?}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_ready(env: &Env, images: &[&str]) {
    let status = env.status();
    for i in images {
        assert_eq!(
            status.get(*i).map(|s| s.0.as_str()),
            Some("ready"),
            "{i}: {:?}",
            status.get(*i)
        );
    }
}

/// No partial download is left, and none was taken for a blob.
fn no_partials(env: &Env) {
    let left: Vec<PathBuf> = files_under(&env.state().join("downloads"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(left.is_empty(), "partial downloads left: {left:?}");
}

fn blob_count(env: &Env) -> usize {
    std::fs::read_dir(env.state().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn s3_example_bucket_ends_ready_and_a_second_run_gets_no_bodies() {
    let s3 = S3::start().with_proxy();
    let keys = s3.upload_example("pool/x/", None);
    s3.put("pool/x/README", b"not under images/");
    s3.put("other/images/stray.tar", b"outside the prefix");
    let env = Env::new();
    let src = format!("s3://{BUCKET}/pool/x");
    let out = run_s3(&env, &s3, &src);
    ok(&out);
    assert_ready(&env, &IMAGES);
    for i in IMAGES {
        check_activation(&env, i);
    }
    let gets = s3.body_gets();
    assert_eq!(
        gets.len(),
        keys.len(),
        "each object is fetched once (small objects: one GET each): {gets:#?}"
    );
    assert!(gets
        .iter()
        .all(|g| !g.contains("stray") && !g.contains("README")));
    // Identical content under different keys is stored once.
    let distinct: std::collections::BTreeSet<Vec<u8>> =
        files_under(&example_bucket().join("images"))
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| std::fs::read(p).unwrap())
            .collect();
    assert!(distinct.len() < keys.len(), "the example shares objects");
    let blobs = blob_count(&env);
    no_partials(&env);
    // Each object's key, size, ETag and last-modified are on the record.
    let db = rusqlite::Connection::open(env.state().join("state.db")).unwrap();
    let recorded: Vec<(String, i64, String, String)> = db
        .prepare("SELECT key, size, stamp, modified FROM objects")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(recorded.len(), keys.len());
    for (key, size, etag, modified) in &recorded {
        assert!(*size >= 0 && etag.starts_with('"'), "{key}: etag {etag}");
        assert!(
            modified.len() >= 19 && modified.contains('T'),
            "{key}: last-modified {modified:?}"
        );
    }

    s3.clear_requests();
    let out = run_s3(&env, &s3, &src);
    ok(&out);
    assert!(
        s3.body_gets().is_empty(),
        "a second run over an unchanged bucket sends no GET for bodies: {:#?}",
        s3.requests()
    );
    assert!(
        s3.requests().iter().any(|l| l.contains("list-type=2")),
        "it lists"
    );
    assert_eq!(blob_count(&env), blobs);
    let v = env.json(&["audit", "adhoc", "--json"]);
    let fetched: Vec<&serde_json::Value> = v["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "download")
        .collect();
    assert_eq!(fetched.len(), 1, "download ran once");
}

#[test]
fn s3_faults_are_retried_and_nothing_partial_is_kept() {
    let s3 = S3::start().with_proxy();
    s3.upload_example("", None);
    s3.faults(
        r#"[
        {"method": "GET", "contains": "images/adhoc/1.tar", "action": "500", "times": 2},
        {"method": "GET", "contains": "images/dockersave.tar", "action": "503", "times": 1},
        {"method": "GET", "contains": "images/many/5.tar", "action": "truncate", "times": 1},
        {"method": "GET", "contains": "images/ociarchive.tar.gz", "action": "reset", "times": 1},
        {"method": "GET", "contains": "images/adhoc-sibling/1.tar", "action": "stall", "seconds": 3, "times": 1},
        {"method": "HEAD", "contains": "images/many/1.tar", "action": "500", "times": 1},
        {"method": "GET", "contains": "list-type=2", "action": "503", "times": 1}
    ]"#,
    );
    let env = Env::new();
    let out = run_s3(&env, &s3, &format!("s3://{BUCKET}?read-timeout-ms=500"));
    ok(&out);
    assert_ready(&env, &IMAGES);
    let log = s3.requests().join("\n");
    for fault in ["/truncate", "/reset", "/stall", " 500", " 503"] {
        assert!(log.contains(fault), "the proxy injected {fault}:\n{log}");
    }
    for i in ["adhoc", "many", "ociarchive", "adhoc-sibling", "dockersave"] {
        check_activation(&env, i);
    }
    no_partials(&env);
}

#[test]
fn s3_access_denied_is_a_clear_failure_that_is_not_retried() {
    let s3 = S3::start().with_proxy();
    s3.upload_example("", Some("adhoc"));
    s3.faults(r#"[{"method": "GET", "contains": "images/adhoc/3.tar", "action": "403"}]"#);
    let env = Env::new();
    let out = run_s3(&env, &s3, &format!("s3://{BUCKET}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let st = env.status();
    assert_ready(&env, &["adhoc-sibling"]);
    let (state, err) = &st["adhoc"];
    assert_eq!(state, "failed");
    let err = err.as_deref().unwrap();
    assert!(
        err.contains("S3 refused") && err.contains("403") && err.contains("adhoc/3.tar"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    assert!(!err.contains(env.dir.path().to_str().unwrap()));
    let gets: Vec<String> = s3
        .body_gets()
        .into_iter()
        .filter(|g| g.contains("adhoc/3.tar"))
        .collect();
    assert_eq!(gets.len(), 1, "access denied is not retried: {gets:?}");
}

#[test]
fn s3_object_deleted_between_list_and_get_marks_the_image_missing() {
    let s3 = S3::start();
    s3.upload_example("", Some("adhoc/"));
    let env = Env::new();
    let src = format!("s3://{BUCKET}");
    let out = s3_cmd(&env, &s3, &src)
        .env("TARPOOL_FAILPOINTS", "after:check-image-exists")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint kills the run");
    s3.delete("images/adhoc/2.tar");
    let out = run_s3(&env, &s3, &src);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (state, err) = &env.status()["adhoc"];
    assert_eq!(state, "failed");
    assert!(err.as_deref().unwrap().contains("missing"), "{err:?}");
    no_partials(&env);
}

#[test]
fn s3_listing_pages_past_1000_keys_and_rejects_hostile_keys() {
    let s3 = S3::start().with_proxy();
    s3.upload_example("", Some("dockersave"));
    let n = 1_100;
    std::thread::scope(|sc| {
        for t in 0..4 {
            let s3 = &s3;
            sc.spawn(move || {
                for i in (t..n).step_by(4) {
                    s3.put(&format!("images/note-{i:04}.txt"), b"x");
                }
            });
        }
    });
    let long = format!("images/a/{}", "z".repeat(1100));
    let hostile = [
        "images/../etc/passwd",
        "images/a//1.tar",
        "images/x\u{1}y/1.tar",
        long.as_str(),
    ];
    for k in hostile {
        s3.put(k, b"x");
    }
    let env = Env::new();
    let out = run_s3(&env, &s3, &format!("s3://{BUCKET}/"));
    ok(&out);
    assert_ready(&env, &["dockersave"]);
    let lists = s3
        .requests()
        .iter()
        .filter(|l| l.contains("list-type=2"))
        .count();
    assert!(lists >= 2, "more than one page");
    let st = env.json(&["status", "--json"]);
    let rejected: Vec<(String, String)> = st["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let notes = rejected
        .iter()
        .filter(|(k, _)| k.starts_with("images/note-"))
        .count();
    assert_eq!(notes, n, "every page was listed");
    let why = |frag: &str| {
        rejected
            .iter()
            .find(|(k, _)| k.contains(frag))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{frag} not rejected"))
    };
    assert!(why("etc/passwd").contains(".."));
    assert!(why("a//1.tar").contains("empty"));
    assert!(why("x\\u{1}y").contains("control"));
    assert!(why("zzzz").contains("longer than"));
    for (k, _) in &rejected {
        assert!(k.len() < 300 && !k.contains('\n'));
    }
    // No key was fetched but the image's own.
    let gets = s3.body_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(!Path::new("/etc/passwd.tar").exists());
}

#[test]
fn s3_large_objects_are_fetched_in_parallel_ranges_and_a_killed_download_resumes() {
    let s3 = S3::start().with_proxy();
    // 20 parts of 64 KiB (the last one short); not an image, so it fails
    // classification after the download, which is what is checked here.
    let data: Vec<u8> = (0..(19 * 65536 + 1000) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s3.put("images/blob/1.tar", &data);
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let env = Env::new();
    let src = format!("s3://{BUCKET}?part-size=65536&concurrency=1");
    // Parts 0..5 arrive; the 7th GET stalls; the process is then killed.
    s3.faults(
        r#"[{"method": "GET", "contains": "images/blob/1.tar", "action": "stall", "seconds": 60, "after": 6}]"#,
    );
    let mut child = Proc(
        s3_cmd(&env, &s3, &src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !s3.requests().iter().any(|l| l.contains("/stall")) {
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", s3.requests());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert!(
        !env.state().join(format!("blobs/sha256/{digest}")).exists(),
        "no partial file is taken for a blob"
    );
    s3.faults("[]");
    s3.clear_requests();
    let out = run_s3(&env, &s3, &src);
    assert_eq!(out.status.code(), Some(1), "random bytes are not an image");
    let gets = s3.body_gets();
    assert_eq!(gets.len(), 14, "only the parts not yet on disk: {gets:#?}");
    assert!(gets.iter().all(|g| g.contains("bytes=")), "ranged GETs");
    let blob = std::fs::read(env.state().join(format!("blobs/sha256/{digest}"))).unwrap();
    assert!(blob == data, "the resumed blob is the object");
    no_partials(&env);

    // Without a kill: all 20 parts, fetched concurrently, verified.
    let env = Env::new();
    s3.clear_requests();
    let out = run_s3(
        &env,
        &s3,
        &format!("s3://{BUCKET}?part-size=65536&concurrency=4"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(s3.body_gets().len(), 20);
    assert!(std::fs::read(env.state().join(format!("blobs/sha256/{digest}"))).unwrap() == data);
    no_partials(&env);
}
