//! `tarpool exec`: a command runs inside an activation, as pid 1 of its own
//! namespaces, on the image's root, with the image's Env, WorkingDir and
//! User, for an activation with a mount point and one without.

use crate::harness::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\n";
const APPLETS: [&str; 11] = [
    "sh", "echo", "id", "hostname", "cat", "pwd", "env", "ls", "test", "sleep", "grep",
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
/// group `extra` 2000), a marker file, and a config with Env, WorkingDir and
/// User.
fn busybox_image() -> Vec<u8> {
    let mut l = tar::Builder::new(Vec::new());
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
    let layer = l.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = serde_json::json!({
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "GREETING=hello from the config"],
            "WorkingDir": "/work",
            "User": "app",
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

/// Runs each `(command, exit status, stdout, stderr substring)` in `act`.
fn check(env: &Env, act: &str, cases: &[(&[&str], i32, &str, &str)]) {
    for (cmd, code, stdout, stderr) in cases {
        let mut args = vec!["exec", act, "--"];
        args.extend_from_slice(cmd);
        let out = env.run(&args);
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(
            (out.status.code(), o.trim_end_matches('\n')),
            (Some(*code), *stdout),
            "exec {act} -- {cmd:?}: stderr: {e}"
        );
        assert!(e.contains(stderr), "exec {act} -- {cmd:?}: stderr: {e}");
    }
}

fn check_activation(env: &Env, act: &str, host_path: &str) {
    let host_test = format!("test -e {host_path} && echo host || echo image");
    check(
        env,
        act,
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
            (
                &["ls", "/dev"],
                0,
                "fd\nfull\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero",
                "",
            ),
            (
                &["ls", "/"],
                0,
                "bin\ndev\netc\nhome\nmarker\nproc\ntmp\nwork",
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

/// Starts `CMD` in `act`, sends SIGTERM `times` times, and returns the exit
/// status.
fn terminate(env: &Env, act: &str, script: &str, times: usize) -> Option<i32> {
    let mut child = env
        .cmd(&["exec", act, "--", "sh", "-c", script])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    for _ in 0..times {
        let st = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait().unwrap().code()
}

#[test]
fn exec_runs_commands_inside_activations() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    std::fs::write(bucket.join("images/bb.tar"), busybox_image()).unwrap();
    let out = env.run(&["run", "--once", "--source", bucket.to_str().unwrap()]);
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
    let host_path = env.state().display().to_string();
    assert!(Path::new(&host_path).exists());

    check_activation(&env, "bb-mounted", &host_path);
    check_activation(&env, "bb-plain", &host_path);
    assert_eq!(
        std::fs::read_to_string(mnt.join("tmp/f")).unwrap(),
        "kept\n",
        "what exec writes is in the activation's mount"
    );

    // With no command, the image's Entrypoint and Cmd (`sh`, reading stdin).
    let out = env.run(&["exec", "bb-plain"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // SIGTERM is forwarded; pid 1 gets only what it handles, so a second
    // one kills.
    let trap = "trap 'exit 3' TERM; while :; do sleep 0.05; done";
    assert_eq!(terminate(&env, "bb-plain", trap, 1), Some(3));
    assert_eq!(terminate(&env, "bb-plain", "sleep 30", 2), Some(137));

    let out = env.run(&["exec", "nope", "--", "sh"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tarpool: error: no activation named nope\n"
    );

    for act in ["bb-mounted", "bb-plain"] {
        env.json(&["deactivate", act]);
    }
    // No mount of exec's outlives it.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("tarpool-exec-"), "{mounts}");
}
