//! `tarpool exec`: a command runs inside an activation, as pid 1 of its own
//! namespaces, on the image's root, with the image's Env, WorkingDir and
//! User, for an activation with a mount point and one without; with
//! Docker's default capabilities minus CAP_MKNOD and CAP_NET_RAW, no
//! controlling terminal, no inherited descriptors, and a lock against a
//! concurrent exec or deactivate; /proc's kernel settings read-only and
//! Docker's masked paths masked, a network namespace of its own (unless
//! `--net host`) and a session keyring of its own.

use crate::harness::*;
use sha2::{Digest, Sha256};
use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// The longest any one tarpool command may take here.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The capability sets of a root command: Docker's default set minus
/// CAP_MKNOD (bit 27) and CAP_NET_RAW (bit 13); no CAP_SYS_ADMIN (bit 21).
const ROOT_CAPS: &str = "CapInh:\t0000000000000000
CapPrm:\t00000000a00405fb
CapEff:\t00000000a00405fb
CapBnd:\t00000000a00405fb
CapAmb:\t0000000000000000";
const USER_CAPS: &str = "CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t00000000a00405fb
CapAmb:\t0000000000000000";
/// CAP_NET_RAW's bit.
const CAP_NET_RAW: u64 = 1 << 13;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\n";
const APPLETS: [&str; 22] = [
    "sh", "echo", "id", "hostname", "cat", "pwd", "env", "ls", "test", "sleep", "grep", "mknod",
    "head", "wc", "ip", "nc", "mount", "tr", "seq", "touch", "stat", "time",
];

fn header(path: &str, kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let h = header(path, tar::EntryType::Regular, mode, 0, data.len() as u64);
    b.append(&h, data).unwrap();
}

/// A docker-save archive: busybox, its applets, a user `app` (1000, also in
/// group `extra` 2000), a marker file, the files `extra` (path, mode,
/// contents), and a config with Env, WorkingDir and User `user`.
fn busybox_image(user: &str, extra: &[(&str, u32, &[u8])]) -> Vec<u8> {
    busybox_image_links(user, extra, &[])
}

/// [`busybox_image`], with the symlinks `links` (path, target), which
/// replace the image's directory of the same path.
fn busybox_image_links(
    user: &str,
    extra: &[(&str, u32, &[u8])],
    links: &[(&str, &str)],
) -> Vec<u8> {
    let mut l = tar::Builder::new(Vec::new());
    for (path, target) in links {
        let mut h = header(path, tar::EntryType::Symlink, 0o777, 0, 0);
        l.append_link(&mut h, path, target).unwrap();
    }
    for (d, mode, uid) in [
        ("bin", 0o755, 0),
        ("etc", 0o755, 0),
        ("home", 0o755, 0),
        ("home/app", 0o755, 1000),
        ("proc", 0o555, 0),
        ("dev", 0o755, 0),
        ("tmp", 0o1777, 0),
        ("work", 0o755, 0),
    ] {
        if links.iter().any(|(p, _)| *p == d) {
            continue;
        }
        let h = header(d, tar::EntryType::Directory, mode, uid, 0);
        l.append(&h, &[][..]).unwrap();
    }
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    file(&mut l, "bin/busybox", 0o755, &busybox);
    for a in APPLETS {
        let mut h = header(&format!("bin/{a}"), tar::EntryType::Symlink, 0o777, 0, 0);
        l.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    file(&mut l, "etc/passwd", 0o644, PASSWD.as_bytes());
    file(&mut l, "etc/group", 0o644, GROUP.as_bytes());
    file(&mut l, "marker", 0o644, b"the image's root\n");
    for (path, mode, data) in extra {
        file(&mut l, path, *mode, data);
    }
    let layer = l.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = serde_json::json!({
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "GREETING=hello from the config"],
            "WorkingDir": "/work",
            "User": user,
            "Cmd": ["sh"],
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let manifest = r#"[{"Config":"config.json","RepoTags":["bb:1"],"Layers":["layer.tar"]}]"#;
    let mut a = tar::Builder::new(Vec::new());
    file(&mut a, "manifest.json", 0o644, manifest.as_bytes());
    file(&mut a, "config.json", 0o644, config.to_string().as_bytes());
    file(&mut a, "layer.tar", 0o644, &layer);
    a.into_inner().unwrap()
}

/// exec's temporary directory (its TMPDIR): what it leaves there shows.
fn tmp(env: &Env) -> PathBuf {
    env.dir.path().join("tmp")
}

/// A test directory whose config names OCI runtime `rt`.
fn env_for(rt: &str) -> Env {
    let env = Env::new();
    std::fs::write(config(&env), format!("runtime = \"{rt}\"\n")).unwrap();
    env
}

fn config(env: &Env) -> PathBuf {
    env.dir.path().join("config.toml")
}

/// `tarpool ARGS`, with TMPDIR [`tmp`] and the test's config.
fn tarpool(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--state-dir").arg(env.state());
    if config(env).exists() {
        c.arg("--config").arg(config(env));
    }
    c.args(args).env_remove("TARPOOL_FAILPOINTS");
    c.env("TMPDIR", tmp(env));
    c
}

/// Waits for `child`, at most [`TIMEOUT`]: a hang fails the test.
fn wait(child: &mut Child) -> ExitStatus {
    let end = Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pid {} did not end within {TIMEOUT:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `c` (stdin empty) to its end, at most [`TIMEOUT`].
fn output(mut c: Command) -> Output {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tarpool");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = wait(&mut child);
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn run(env: &Env, args: &[&str]) -> Output {
    output(tarpool(env, args))
}

/// `tarpool exec ACT -- CMD...`
fn exec(env: &Env, act: &str, cmd: &[&str]) -> Output {
    exec_with(env, act, &[], cmd)
}

/// `tarpool exec ACT OPTS... -- CMD...`
fn exec_with(env: &Env, act: &str, opts: &[&str], cmd: &[&str]) -> Output {
    run(env, &exec_args(act, opts, cmd))
}

fn exec_args<'a>(act: &'a str, opts: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["exec", act];
    args.extend_from_slice(opts);
    args.push("--");
    args.extend_from_slice(cmd);
    args
}

/// A `tarpool exec` in the background, its stdout read line by line.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    /// Starts `sh -c SCRIPT` in `act`, with a pipe for its stdin.
    fn start(env: &Env, act: &str, script: &str) -> Running {
        Running::start_with(env, act, &[], script)
    }

    /// [`Running::start`], with exec's options `opts`.
    fn start_with(env: &Env, act: &str, opts: &[&str], script: &str) -> Running {
        let mut child = tarpool(env, &exec_args(act, opts, &["sh", "-c", script]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                if tx.send(l.unwrap()).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// Waits, at most [`TIMEOUT`], for the command to print `line`.
    fn expect(&mut self, line: &str) {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(l) => assert_eq!(l, line),
            Err(e) => {
                let _ = self.child.kill();
                let status = self.child.wait();
                panic!("no {line:?} from the command: {e} (tarpool: {status:?})");
            }
        }
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Closes the command's stdin and waits for its end.
    fn finish(mut self) -> Option<i32> {
        drop(self.child.stdin.take());
        wait(&mut self.child).code()
    }
}

/// The error of a command on a locked activation.
fn in_use(act: &str) -> String {
    format!("tarpool: error: activation {act} is in use (tarpool exec or deactivate)\n")
}

/// `out` failed with exit status 2 and exactly `stderr`.
fn assert_refused(out: &Output, stderr: &str) {
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (Some(2), stderr),
        "{out:?}"
    );
}

/// Runs each `(command, exit status, stdout, stderr substring)` in `act`.
fn check(env: &Env, act: &str, cases: &[(&[&str], i32, &str, &str)]) {
    check_with(env, act, &[], cases)
}

/// [`check`], with exec's options `opts`.
fn check_with(env: &Env, act: &str, opts: &[&str], cases: &[(&[&str], i32, &str, &str)]) {
    for (cmd, code, stdout, stderr) in cases {
        let out = exec_with(env, act, opts, cmd);
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(
            (out.status.code(), o.trim_end_matches('\n')),
            (Some(*code), *stdout),
            "exec {act} {opts:?} -- {cmd:?}: stderr: {e}"
        );
        assert!(
            e.contains(stderr),
            "exec {act} {opts:?} -- {cmd:?}: stderr: {e}"
        );
    }
}

fn check_activation(env: &Env, act: &str, opts: &[&str], host_path: &str) {
    let host_test = format!("test -e {host_path} && echo host || echo image");
    check_with(
        env,
        act,
        opts,
        &[
            (&["sh", "-c", "echo $$"], 0, "1", ""),
            (&["hostname"], 0, act, ""),
            (&["cat", "/proc/1/cmdline"], 0, "cat\0/proc/1/cmdline\0", ""),
            (
                &["sh", "-c", "test -e /proc/self && echo proc"],
                0,
                "proc",
                "",
            ),
            (
                &[
                    "sh",
                    "-c",
                    "test -c /dev/null && echo x >/dev/null && echo null",
                ],
                0,
                "null",
                "",
            ),
            // The runtime's private /dev (crun adds `core`, a link to the
            // masked /proc/kcore).
            (
                &["sh", "-c", "ls /dev | grep -vx core"],
                0,
                "fd\nfull\nmqueue\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero",
                "",
            ),
            (
                &["ls", "/"],
                0,
                "bin\ndev\netc\nhome\nmarker\nproc\nsys\ntmp\nwork",
                "",
            ),
            (&["sh", "-c", &host_test], 0, "image", ""),
            (
                &["sh", "-c", "echo $GREETING"],
                0,
                "hello from the config",
                "",
            ),
            (&["sh", "-c", "echo $HOME"], 0, "/home/app", ""),
            (&["pwd"], 0, "/work", ""),
            (&["id", "-u"], 0, "1000", ""),
            (&["id", "-G"], 0, "1000 2000", ""),
            // User app: no capabilities left, and none to gain.
            (&["grep", "^Cap", "/proc/self/status"], 0, USER_CAPS, ""),
            // Its own session (pid 1 leads it), no controlling terminal.
            (
                &["sh", "-c", "set -- $(cat /proc/1/stat); echo $5 $6 $7"],
                0,
                "1 1 0",
                "",
            ),

            (&["sh", "-c", "exit 7"], 7, "", ""),
            (
                &["no-such-command"],
                127,
                "",
                "no-such-command: command not found",
            ),
            (&["/bin/nope"], 127, "", "/bin/nope: no such file"),
            // The root is the activation's, writable, and stays so.
            (&["sh", "-c", "echo kept >/tmp/f"], 0, "", ""),
            (&["cat", "/tmp/f"], 0, "kept", ""),
        ],
    );
}

/// Starts `sh -c SCRIPT` in `act`, waits for its "ready" line, sends
/// SIGTERM (once, or until it ends), and returns its exit status.
fn terminate(env: &Env, act: &str, script: &str, once: bool) -> Option<i32> {
    let mut r = Running::start(env, act, script);
    r.expect("ready");
    r.signal("-TERM");
    let end = Instant::now() + TIMEOUT;
    // Until tarpool has taken each one (a pending signal is sent only once).
    while !once && r.child.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        r.signal("-TERM");
    }
    r.finish()
}

/// The capabilities of a root command; mknod is refused.
fn check_root(env: &Env, act: &str) {
    let out = exec(env, act, &["grep", "^Cap", "/proc/self/status"]);
    let status = String::from_utf8_lossy(&out.stdout);
    for set in ["CapBnd", "CapEff", "CapPrm"] {
        let line = status.lines().find(|l| l.starts_with(set)).unwrap();
        let bits = u64::from_str_radix(line.rsplit('\t').next().unwrap(), 16).unwrap();
        assert_eq!(bits & (1 << 21), 0, "CAP_SYS_ADMIN: {status}");
        assert_eq!(bits & (1 << 27), 0, "CAP_MKNOD: {status}");
        assert_eq!(bits & CAP_NET_RAW, 0, "CAP_NET_RAW: {status}");
    }
    check(
        env,
        act,
        &[
            (&["grep", "^Cap", "/proc/self/status"], 0, ROOT_CAPS, ""),
            (&["id", "-u"], 0, "0", ""),
            (
                &["mknod", "/x", "b", "8", "0"],
                1,
                "",
                "Operation not permitted",
            ),
            (&["sh", "-c", "test -e /x || echo none"], 0, "none", ""),
        ],
    );
}

fn exec_runs_commands_inside_activations(rt: &str) {
    let env = env_for(rt);
    let bucket = env.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    std::fs::write(bucket.join("images/bb.tar"), busybox_image("app", &[])).unwrap();
    std::fs::write(bucket.join("images/bbroot.tar"), busybox_image("", &[])).unwrap();
    std::fs::create_dir(tmp(&env)).unwrap();
    let out = run(
        &env,
        &["run", "--once", "--source", bucket.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "run failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = env.dir.path().join("mnt");
    env.json(&[
        "activate",
        "bb",
        "--as",
        "bb-mounted",
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    env.json(&["activate", "bb", "--as", "bb-plain"]);
    env.json(&["activate", "bbroot", "--as", "bb-root"]);
    let host_path = env.state().display().to_string();
    assert!(Path::new(&host_path).exists());

    // overlayfs mounts cannot be id-mapped: a mounted overlay activation
    // runs in the host's user namespace only, and says so.
    let out = exec(&env, "bb-mounted", &["true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("overlayfs mounts cannot be id-mapped: use --userns host"),
        "{stderr}"
    );
    let host = ["--userns", "host"];
    check_activation(&env, "bb-mounted", &host, &host_path);
    check_activation(&env, "bb-plain", &[], &host_path);
    // The activation's root is not nosuid (the image's setuid programs
    // work inside); it is nodev, but under crun only with a user namespace
    // (crun remounts the root, clearing nodev, when it may).
    let nodev = "l=$(grep ' / / ' /proc/self/mountinfo); \
                 case $l in *nosuid*) echo nosuid;; *nodev*) echo nodev;; *) echo dev;; esac";
    check(&env, "bb-plain", &[(&["sh", "-c", nodev], 0, "nodev", "")]);
    let want = if rt == "crun" { "dev" } else { "nodev" };
    check_with(
        &env,
        "bb-mounted",
        &host,
        &[(&["sh", "-c", nodev], 0, want, "")],
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("tmp/f")).unwrap(),
        "kept\n",
        "what exec writes is in the activation's mount"
    );
    check_root(&env, "bb-root");

    // Descriptors exec's caller left open (7 here) do not reach the command.
    let c = tarpool(&env, &["exec", "bb-plain", "--", "ls", "/proc/self/fd"]);
    let mut sh = Command::new("sh");
    sh.args(["-c", "exec 7</dev/null; exec \"$@\"", "sh"])
        .arg(c.get_program())
        .args(c.get_args())
        .env("TMPDIR", tmp(&env))
        .env_remove("TARPOOL_FAILPOINTS");
    let out = output(sh);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "0\n1\n2\n3\n"),
        "{out:?}"
    );

    // With no command, the image's Entrypoint and Cmd (`sh`, reading stdin).
    let out = run(&env, &["exec", "bb-plain"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // SIGTERM is forwarded; pid 1 gets only what it handles, so a second
    // one kills.
    let trap = "trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done";
    assert_eq!(terminate(&env, "bb-plain", trap, true), Some(3));
    assert_eq!(
        terminate(&env, "bb-plain", "echo ready; sleep 30", false),
        Some(137)
    );

    // An exec that mounts the activation itself (bb-plain) locks it
    // exclusively: no second exec, no deactivate, until it ends.
    let mut first = Running::start(&env, "bb-plain", "echo ready; read x; echo done");
    first.expect("ready");
    let temps = || -> Vec<PathBuf> {
        std::fs::read_dir(tmp(&env))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("tarpool-exec-"))
            .collect()
    };
    assert_eq!(temps().len(), 1, "exec's mount point, while it runs");
    assert_refused(&run(&env, &["deactivate", "bb-plain"]), &in_use("bb-plain"));
    assert_refused(
        &exec(&env, "bb-plain", &["echo", "hi"]),
        &in_use("bb-plain"),
    );
    assert_eq!(first.finish(), Some(0));
    let out = exec(&env, "bb-plain", &["echo", "hi"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{out:?}");

    // One that binds the mount point (bb-mounted) locks it shared: more
    // execs, but no deactivate.
    let mut first = Running::start_with(&env, "bb-mounted", &host, "echo ready; read x; echo done");
    first.expect("ready");
    let out = exec_with(&env, "bb-mounted", &host, &["echo", "hi"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{out:?}");
    assert_refused(
        &run(&env, &["deactivate", "bb-mounted"]),
        &in_use("bb-mounted"),
    );
    assert_eq!(first.finish(), Some(0));

    let out = run(&env, &["exec", "nope", "--", "sh"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tarpool: error: no activation named nope\n"
    );

    for act in ["bb-mounted", "bb-plain", "bb-root"] {
        env.json(&["deactivate", act]);
    }
    // exec removes its temporary mount points (with rmdir: had one stayed
    // mounted, it would be here).
    assert_eq!(temps(), Vec::<PathBuf>::new());
    // deactivate removes the activation's lock file.
    let locks: Vec<_> = std::fs::read_dir(env.state().join("locks"))
        .unwrap()
        .collect();
    assert!(locks.is_empty(), "{locks:?}");
}

/// The paths of /proc exec makes read-only (Docker's).
const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// Docker's masked paths under /proc (exec mounts no /sys).
const MASKED: [&str; 10] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
];
/// The description of the key the keyring test puts in the caller's
/// session keyring.
const KEY: &str = "tarpool-exec-test";

/// `tests/e2e/exec_probe.c`, linked statically into the test's directory.
fn build_probe(env: &Env) -> PathBuf {
    let bin = env.dir.path().join("probe");
    let st = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(repo().join("tests/e2e/exec_probe.c"))
        .status()
        .expect("running cc (gcc and libc6-dev)");
    assert!(st.success(), "building the probe: {st}");
    bin
}

/// A state directory with a busybox image run as root, with
/// `/bin/probe`, processed and activated as `bb`; and the probe's path on
/// the host.
fn probe_env(rt: &str) -> (Env, PathBuf) {
    let env = env_for(rt);
    let probe = build_probe(&env);
    let bucket = env.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    let bin = std::fs::read(&probe).unwrap();
    let image = busybox_image("", &[("bin/probe", 0o755, &bin)]);
    std::fs::write(bucket.join("images/bb.tar"), image).unwrap();
    std::fs::create_dir(tmp(&env)).unwrap();
    let out = run(
        &env,
        &["run", "--once", "--source", bucket.to_str().unwrap()],
    );
    assert!(out.status.success(), "run failed: {out:?}");
    env.json(&["activate", "bb", "--as", "bb"]);
    (env, probe)
}

/// The paths of `paths` that exist on the host (the command's /proc is the
/// same kernel's).
fn on_host<'a>(paths: &[&'a str]) -> Vec<&'a str> {
    paths
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect()
}

/// A command that prints `1` when `path` is a read-only mount.
fn mounted_ro(path: &str) -> String {
    format!("grep -c ' {path} ro[, ]' /proc/self/mountinfo")
}

/// An error that refuses a write: a read-only mount, or no permission.
fn denied(msg: &str) -> bool {
    msg.contains("Read-only file system") || msg.contains("Permission denied")
}

fn exec_cannot_change_kernel_settings(rt: &str) {
    let (env, _) = probe_env(rt);
    // A root command writes the host's core_pattern: refused, the host's
    // value stays (were it changed, it is put back before failing).
    let core = "/proc/sys/kernel/core_pattern";
    let before = std::fs::read_to_string(core).unwrap();
    let write = format!("echo core.tarpool-exec-test >{core}");
    let out = exec(&env, "bb", &["sh", "-c", &write]);
    let after = std::fs::read_to_string(core).unwrap();
    if after != before {
        let _ = std::fs::write(core, &before);
    }
    assert_eq!(after, before, "exec changed the host's {core}: {out:?}");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(denied(&stderr), "{stderr}");

    let paths = on_host(&READ_ONLY);
    assert!(paths.contains(&"/proc/sys"), "{paths:?}");
    let mut cases: Vec<(Vec<String>, i32, String, &str)> = vec![
        // Still readable.
        (
            vec!["cat".into(), core.into()],
            0,
            before.trim_end().to_string(),
            "",
        ),
        // CAP_SYS_ADMIN is gone: no remounting it writable.
        (
            vec![
                "mount".into(),
                "-o".into(),
                "remount,rw".into(),
                "/proc/sys".into(),
            ],
            1,
            String::new(),
            "permission denied",
        ),
    ];
    // access(2) says EROFS, even to root (on /proc/sys itself, a sysctl
    // directory, EACCES whatever the mount: its files are asked instead).
    let probed: Vec<&str> = [
        core,
        "/proc/sys/kernel/panic",
        "/proc/sys/vm/overcommit_memory",
    ]
    .into_iter()
    .chain(paths.iter().copied().filter(|p| *p != "/proc/sys"))
    .collect();
    let mut cmd = vec!["probe".to_string(), "writable".into()];
    let _ = &mut cases;
    cmd.extend(probed.iter().map(|p| p.to_string()));
    check_owned(&env, "bb", &[], &cases);
    // Read-only mounts (EROFS); under the user namespace the container's
    // root is not the host's, so the kernel says EACCES first.
    let out = exec(
        &env,
        "bb",
        &cmd.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let lines = String::from_utf8_lossy(&out.stdout);
    assert_eq!(lines.lines().count(), probed.len(), "{out:?}");
    for (l, p) in lines.lines().zip(&probed) {
        assert!(l.starts_with(&format!("{p}: ")) && denied(l), "{l}");
    }
    for p in &paths {
        let out = exec(&env, "bb", &["sh", "-c", &mounted_ro(p)]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n", "{p}: {out:?}");
    }
}

fn exec_masks_dockers_masked_paths(rt: &str) {
    let (env, _) = probe_env(rt);
    let paths = on_host(&MASKED);
    assert!(paths.contains(&"/proc/keys"), "{paths:?}");
    let mut cases: Vec<(Vec<String>, i32, String, &str)> = Vec::new();
    for p in paths {
        if Path::new(p).is_dir() {
            // An empty read-only tmpfs.
            cases.push((sh(&format!("ls -A {p}")), 0, String::new(), ""));
            cases.push((sh(&mounted_ro(p)), 0, "1".into(), ""));
            let out = exec(&env, "bb", &["probe", "writable", p]);
            assert!(
                denied(&String::from_utf8_lossy(&out.stdout)),
                "{p}: {out:?}"
            );
        } else {
            // The null device: reads nothing.
            let null = format!("test -c {p} && head -c 1 {p} | wc -c");
            cases.push((sh(&null), 0, "0".into(), ""));
        }
    }
    check_owned(&env, "bb", &[], &cases);
}

/// The interfaces `/proc/net/dev` lists, sorted.
fn interfaces(dev: &str) -> Vec<String> {
    let mut names: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_string()))
        .collect();
    names.sort();
    names
}

fn exec_has_a_network_of_its_own(rt: &str) {
    let (env, _) = probe_env(rt);
    let host = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert!(host.len() > 1, "the host has no interface but lo: {host:?}");
    let dev = |opts: &[&str]| {
        let out = exec_with(&env, "bb", opts, &["cat", "/proc/net/dev"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        interfaces(&String::from_utf8_lossy(&out.stdout))
    };
    // A round trip through 127.0.0.1 (the listener may need a moment).
    let echo = "nc -l -p 7777 -e echo hi & i=0; while [ $i -lt 200 ]; do \
                out=$(nc 127.0.0.1 7777 </dev/null 2>/dev/null); \
                [ -n \"$out\" ] && { echo $out; exit 0; }; \
                i=$((i+1)); sleep 0.05; done; exit 1";
    for opts in [&[][..], &["--net", "none"]] {
        // Only lo, up, and localhost works.
        assert_eq!(dev(opts), ["lo"], "{opts:?}");
        check_with(
            &env,
            "bb",
            opts,
            &[
                (
                    &["sh", "-c", "ip link show lo | grep -c 'LOOPBACK,UP'"],
                    0,
                    "1",
                    "",
                ),
                (&["sh", "-c", echo], 0, "hi", ""),
            ],
        );
    }
    // The host's network, asked for.
    assert_eq!(dev(&["--net", "host"]), host);
    let out = exec_with(&env, "bb", &["--net", "bridge"], &["true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid value 'bridge'"), "{stderr}");
}

fn exec_has_no_cap_net_raw(rt: &str) {
    let (env, _) = probe_env(rt);
    for opts in [&[][..], &["--net", "host"]] {
        let out = exec_with(&env, "bb", opts, &["grep", "^Cap", "/proc/self/status"]);
        let status = String::from_utf8_lossy(&out.stdout);
        for set in ["CapBnd", "CapEff", "CapPrm"] {
            let line = status.lines().find(|l| l.starts_with(set)).unwrap();
            let bits = u64::from_str_radix(line.rsplit('\t').next().unwrap(), 16).unwrap();
            assert_eq!(bits & CAP_NET_RAW, 0, "CAP_NET_RAW, {opts:?}: {status}");
        }
        check_with(
            &env,
            "bb",
            opts,
            &[(
                &["probe", "raw"],
                0,
                "packet: Operation not permitted\ninet: Operation not permitted",
                "",
            )],
        );
    }
}

fn exec_has_a_session_keyring_of_its_own(rt: &str) {
    let (env, probe) = probe_env(rt);
    // `probe host-key` joins a new session keyring, puts KEY in it (for its
    // possessors only) and runs `cmd`.
    let with_key = |cmd: &Command| -> Output {
        let mut c = Command::new(&probe);
        c.args(["host-key", KEY, "secret"])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .env("TMPDIR", tmp(&env))
            .env_remove("TARPOOL_FAILPOINTS");
        output(c)
    };
    let shown = |out: &Output| {
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // On the host, the probe finds the key: its "not available" below means
    // something.
    let mut host_probe = Command::new(&probe);
    host_probe.args(["key", KEY]);
    let out = with_key(&host_probe);
    assert_eq!(shown(&out), (Some(0), "found: secret\n".into()), "{out:?}");
    // The command's session keyring is a new one: the caller's key is out
    // of its reach.
    let inside = tarpool(&env, &exec_args("bb", &[], &["probe", "key", KEY]));
    let out = with_key(&inside);
    // Docker's seccomp profile refuses keyctl(2) outright; without it,
    // the key is not found.
    let (code, text) = shown(&out);
    assert_eq!(code, Some(1), "{out:?}");
    assert!(
        text == "Operation not permitted\n" || text == "Required key not available\n",
        "{out:?}"
    );
    // And /proc/keys, which lists the keys it may view, is masked.
    check(
        &env,
        "bb",
        &[(
            &["sh", "-c", "test -c /proc/keys && wc -c </proc/keys"],
            0,
            "0",
            "",
        )],
    );
}

/// `sh -c SCRIPT`.
fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// [`check_with`], for cases made at run time.
fn check_owned(env: &Env, act: &str, opts: &[&str], cases: &[(Vec<String>, i32, String, &str)]) {
    for (cmd, code, stdout, stderr) in cases {
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        check_with(env, act, opts, &[(&cmd, *code, stdout, stderr)]);
    }
}

#[test]
fn exec_runs_commands_inside_activations_crun() {
    exec_runs_commands_inside_activations("crun")
}

#[test]
fn exec_runs_commands_inside_activations_runc() {
    exec_runs_commands_inside_activations("runc")
}

#[test]
fn exec_cannot_change_kernel_settings_crun() {
    exec_cannot_change_kernel_settings("crun")
}

#[test]
fn exec_cannot_change_kernel_settings_runc() {
    exec_cannot_change_kernel_settings("runc")
}

#[test]
fn exec_masks_dockers_masked_paths_crun() {
    exec_masks_dockers_masked_paths("crun")
}

#[test]
fn exec_masks_dockers_masked_paths_runc() {
    exec_masks_dockers_masked_paths("runc")
}

#[test]
fn exec_has_a_network_of_its_own_crun() {
    exec_has_a_network_of_its_own("crun")
}

#[test]
fn exec_has_a_network_of_its_own_runc() {
    exec_has_a_network_of_its_own("runc")
}

#[test]
fn exec_has_no_cap_net_raw_crun() {
    exec_has_no_cap_net_raw("crun")
}

#[test]
fn exec_has_no_cap_net_raw_runc() {
    exec_has_no_cap_net_raw("runc")
}

#[test]
fn exec_has_a_session_keyring_of_its_own_crun() {
    exec_has_a_session_keyring_of_its_own("crun")
}

#[test]
fn exec_has_a_session_keyring_of_its_own_runc() {
    exec_has_a_session_keyring_of_its_own("runc")
}

/// Limits hold and root is not root: past `--memory 64M` the command is
/// killed (137); a fork loop stops at `--pids 32`; inside, uid 0 is host
/// uid 524288 (`/proc/self/uid_map`), and a file the container's root
/// makes is its root's inside. `tarpool bundle` writes a bundle the
/// runtime runs unchanged.
fn exec_limits_userns_and_bundle(rt: &str) {
    let (env, _) = probe_env(rt);
    let mem = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    check_with(
        &env,
        "bb",
        &["--memory", "64M"],
        &[(&["sh", "-c", mem], 137, "", "")],
    );
    check(&env, "bb", &[(&["sh", "-c", mem], 0, "survived", "")]);
    // 40 sleepers: with --pids 32 the shell cannot fork them all (busybox
    // sh gives up: exit 2, "can't fork").
    let forks = "for i in $(seq 40); do sleep 2 & done; echo all started";
    let out = exec_with(&env, "bb", &["--pids", "32"], &["sh", "-c", forks]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fork"),
        "{out:?}"
    );
    check(&env, "bb", &[(&["sh", "-c", forks], 0, "all started", "")]);
    // --cpus 0.2: a busy loop gets at most a fifth of a CPU (CPU time over
    // wall time, as busybox `time` measures them); without it, more.
    let spin = "time -f '%e %U %S' sh -c 'i=0; while [ $i -lt 600000 ]; do i=$((i+1)); done' 2>&1";
    let share = |opts: &[&str]| -> f64 {
        let out = exec_with(&env, "bb", opts, &["sh", "-c", spin]);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<f64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(v.len(), 3, "{out:?}");
        (v[1] + v[2]) / v[0].max(0.01)
    };
    let limited = share(&["--cpus", "0.2"]);
    let free = share(&[]);
    assert!(limited < 0.3, "--cpus 0.2 gave {limited:.2} of a CPU");
    assert!(free > 0.4, "without --cpus: {free:.2} of a CPU");
    eprintln!("{rt}: a busy loop got {limited:.2} of a CPU under --cpus 0.2, {free:.2} without");
    check(
        &env,
        "bb",
        &[
            (
                &["cat", "/proc/self/uid_map"],
                0,
                "         0     524288      65536",
                "",
            ),
            (
                &["sh", "-c", "touch /made && stat -c '%u %g' /made"],
                0,
                "0 0",
                "",
            ),
        ],
    );
    check_with(
        &env,
        "bb",
        &["--userns", "host"],
        &[(
            &["cat", "/proc/self/uid_map"],
            0,
            "         0          0 4294967295",
            "",
        )],
    );
    // A bundle of a mounted activation, run by the runtime itself.
    let mnt = env.dir.path().join("mnt");
    env.json(&[
        "activate",
        "bb",
        "--as",
        "bm",
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    let dir = env.dir.path().join("bundle");
    let out = run(
        &env,
        &[
            "bundle",
            "bm",
            dir.to_str().unwrap(),
            "--userns",
            "host",
            "--",
            "sh",
            "-c",
            "echo $$ $(hostname)",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs");
    assert_eq!(spec["process"]["args"][2], "echo $$ $(hostname)");
    assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    let root = env.dir.path().join("rt");
    let run_it = Command::new(rt)
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&dir)
        .arg(format!("{}-test", made["suggested_id"].as_str().unwrap()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        (
            run_it.status.code(),
            String::from_utf8_lossy(&run_it.stdout).as_ref()
        ),
        (Some(0), "1 bm\n"),
        "{run_it:?}"
    );
    // Deactivating unmounts the bundle's root and removes the bundle.
    env.json(&["deactivate", "bm"]);
    assert!(!dir.exists(), "the bundle stays after deactivate");
}

#[test]
fn exec_limits_userns_and_bundle_crun() {
    exec_limits_userns_and_bundle("crun")
}

#[test]
fn exec_limits_userns_and_bundle_runc() {
    exec_limits_userns_and_bundle("runc")
}

/// Escapes fail, each one its own case: writing /proc/sysrq-trigger,
/// mounting, loading a module, ptrace of a host process, a host file
/// through /proc/1/root; and the shapes of runc's 2025 escapes, an image
/// whose /dev/null or /dev/console is a symlink to a host path (the
/// runtime's own /dev covers them) or whose /proc or /dev is one (refused).
/// Nothing outside the activation changes.
fn exec_escapes_fail(rt: &str) {
    let (env, probe) = probe_env(rt);
    let bin = std::fs::read(&probe).unwrap();
    let core = "/proc/sys/kernel/core_pattern";
    let before = std::fs::read_to_string(core).unwrap();
    // A host process to trace, and a host file to reach.
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let host_file = env.dir.path().join("host-only");
    std::fs::write(&host_file, "host\n").unwrap();
    let ptrace_pid = sleeper.id().to_string();
    let through_proc1 = format!(
        "cat /proc/1/root{} 2>&1 || echo unreachable",
        host_file.display()
    );
    let sysrq = "echo h >/proc/sysrq-trigger 2>/dev/null && echo written || echo refused";
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (vec!["sh", "-c", sysrq], 0, "refused".into()),
        (
            vec!["probe", "mount", "/tmp"],
            0,
            "mount: Operation not permitted".into(),
        ),
        (
            vec!["probe", "module"],
            0,
            "finit_module: Operation not permitted\ninit_module: Operation not permitted".into(),
        ),
        (
            vec![
                "sh",
                "-c",
                "/bin/probe ptrace $0 | grep -vx 'ptrace: ok'",
                &ptrace_pid,
            ],
            0,
            String::new(),
        ),
        (
            vec!["sh", "-c", &through_proc1],
            0,
            format!(
                "cat: can't open '/proc/1/root{}': No such file or directory\nunreachable",
                host_file.display()
            ),
        ),
    ];
    for (cmd, code, want) in &cases {
        let out = exec(&env, "bb", cmd);
        let got = String::from_utf8_lossy(&out.stdout);
        if want.is_empty() {
            // ptrace: any refusal (ESRCH: not in its pid namespace).
            assert!(
                got.starts_with("ptrace: ") && out.status.code() == Some(*code),
                "{cmd:?}: {out:?}"
            );
        } else {
            assert_eq!(
                (out.status.code(), got.trim_end()),
                (Some(*code), want.as_str()),
                "{cmd:?}: {out:?}"
            );
        }
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // The runc 2025 shapes. /dev/null and /dev/console links to host
    // files: the runtime's /dev is its own, the links are never followed.
    let bucket = env.dir.path().join("bucket2");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    let links = busybox_image_links(
        "",
        &[("bin/probe", 0o755, &bin)],
        &[("dev/null", core), ("dev/console", "/proc/sysrq-trigger")],
    );
    std::fs::write(bucket.join("images/links.tar"), links).unwrap();
    let proc_link = busybox_image_links("", &[], &[("proc", "/")]);
    std::fs::write(bucket.join("images/proclink.tar"), proc_link).unwrap();
    let dev_link = busybox_image_links("", &[], &[("dev", "/dev")]);
    std::fs::write(bucket.join("images/devlink.tar"), dev_link).unwrap();
    let out = run(
        &env,
        &["run", "--once", "--source", bucket.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    for (img, act) in [("links", "l"), ("proclink", "p"), ("devlink", "d")] {
        env.json(&["activate", img, "--as", act]);
    }
    check(
        &env,
        "l",
        &[(
            &[
                "sh",
                "-c",
                "echo x >/dev/null && test -c /dev/null && echo null ok",
            ],
            0,
            "null ok",
            "",
        )],
    );
    for (act, name) in [("p", "proc"), ("d", "dev")] {
        let out = exec(&env, act, &["true"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("the image's /{name} is a symlink, where the runtime mounts /{name}: refusing to run it")),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(core).unwrap(),
        before,
        "{core} changed"
    );
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host\n");
}

#[test]
fn exec_escapes_fail_crun() {
    exec_escapes_fail("crun")
}

#[test]
fn exec_escapes_fail_runc() {
    exec_escapes_fail("runc")
}

/// The container a SIGKILLed exec leaves (its runtime dies with it, the
/// command runs on) is deleted by the next exec of the activation: its
/// processes end and the runtime lists nothing.
fn exec_cleans_up_after_a_killed_exec(rt: &str) {
    let (env, _) = probe_env(rt);
    // A sleep of its own length: the crun and runc variants run at once,
    // and each counts only its own.
    let secs = if rt == "crun" { 601 } else { 602 };
    let script = format!("echo ready; exec sleep {secs}");
    let mut r = Running::start(&env, "bb", &script);
    r.expect("ready");
    let list = || {
        let out = Command::new(rt)
            .arg("--root")
            .arg(env.state().join("runtime").join(rt))
            .args(["list", "-q"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let sleepers = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.unwrap().path().join("cmdline")).ok())
            .filter(|c| c.as_slice() == format!("sleep\x00{secs}\x00").as_bytes())
            .count()
    };
    // Killed once the runtime has recorded the container and `sh` has
    // become the sleep ("ready" comes before both).
    let end = Instant::now() + TIMEOUT;
    while !(list().starts_with("bb.") && sleepers() == 1) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    r.signal("-KILL");
    assert_eq!(wait(&mut r.child).code(), None);
    // Left behind: the container and its command.
    let left = list();
    assert!(left.starts_with("bb."), "{left:?}");
    assert_eq!(sleepers(), 1);
    check(&env, "bb", &[(&["echo", "hi"], 0, "hi", "")]);
    assert_eq!(list(), "", "the stale container is still listed");
    let end = Instant::now() + TIMEOUT;
    while sleepers() > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sleepers(), 0, "the stale container's command still runs");
    // Nothing of exec's stays in its temporary directory.
    let temps: Vec<_> = std::fs::read_dir(tmp(&env))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("tarpool-exec-"))
        .collect();
    assert!(temps.len() <= 1, "{temps:?}");

    // Deactivate deletes one too, under whichever runtime left it, even
    // with the config naming another runtime since (one not installed).
    let mut r = Running::start(&env, "bb", &script);
    r.expect("ready");
    r.signal("-KILL");
    assert_eq!(wait(&mut r.child).code(), None);
    assert!(list().starts_with("bb."));
    std::fs::write(config(&env), "runtime = \"/nonexistent/oci-runtime\"\n").unwrap();
    let out = run(&env, &["deactivate", "bb"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(list(), "", "deactivate left the stale container");
    let end = Instant::now() + TIMEOUT;
    while sleepers() > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sleepers(), 0, "the stale container's command still runs");
}

#[test]
fn exec_cleans_up_after_a_killed_exec_crun() {
    exec_cleans_up_after_a_killed_exec("crun")
}

#[test]
fn exec_cleans_up_after_a_killed_exec_runc() {
    exec_cleans_up_after_a_killed_exec("runc")
}

/// The image's `User` is resolved by the user step from the image's own
/// files: a user the image does not have, or an /etc/passwd over 1 MiB, is
/// a one-line error that blames the image (exit 2), before any runtime.
#[test]
fn exec_resolves_the_images_user_or_says_why_not() {
    let env = env_for("crun");
    let bucket = env.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    std::fs::create_dir(tmp(&env)).unwrap();
    std::fs::write(bucket.join("images/ghost.tar"), busybox_image("ghost", &[])).unwrap();
    let big = vec![b'x'; (1 << 20) + 1];
    std::fs::write(
        bucket.join("images/bigpw.tar"),
        busybox_image("app", &[("etc/passwd", 0o644, &big)]),
    )
    .unwrap();
    let out = run(
        &env,
        &["run", "--once", "--source", bucket.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    for (img, want) in [
        (
            "ghost",
            "tarpool: error: activation ghost: user `ghost` is not in the image's /etc/passwd\n",
        ),
        (
            "bigpw",
            "tarpool: error: activation bigpw: the image's /etc/passwd is over 1048576 bytes\n",
        ),
    ] {
        env.json(&["activate", img, "--as", img]);
        let out = exec(&env, img, &["true"]);
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).as_ref()
            ),
            (Some(2), want),
            "{out:?}"
        );
    }
}
