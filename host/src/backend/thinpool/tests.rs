//! The thin-pool backend against the recording device-mapper fake (this
//! kernel has no device-mapper; the real kernel's dm-thin is exercised by
//! tests/vm/thinpool.sh inside a VM).

use super::*;
use crate::backend::dm::RecordingDm;
use crate::backend::{Known, Snapshotter};
use crate::error::Failure;
use crate::extract::ApplyStats;
use crate::sys::{RecordingMounts, Suid};

struct Rig {
    dir: tempfile::TempDir,
    dm: Arc<RecordingDm>,
    pool: ThinPool,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let dm = Arc::new(RecordingDm::with_pool("tp", dir.path()));
    let pool = reopen(&dir, &dm);
    Rig { dir, dm, pool }
}

fn reopen(dir: &tempfile::TempDir, dm: &Arc<RecordingDm>) -> ThinPool {
    let cfg = ThinConfig {
        pool: "tp".into(),
        volume_size: "1G".into(),
        ..ThinConfig::default()
    };
    ThinPool::open(
        &crate::statedir::StateDir::new(dir.path()),
        cfg,
        dm.clone(),
        Arc::new(RecordingMounts::default()),
    )
    .unwrap()
}

fn ok_apply() -> impl FnMut(rustix::fd::BorrowedFd<'_>) -> Result<ApplyStats, Failure> + Send {
    |_root| Ok(ApplyStats::default())
}

fn rows(p: &ThinPool) -> Vec<(u32, String, Option<u32>, String, bool)> {
    p.devices()
        .unwrap()
        .into_iter()
        .map(|d| (d.dev_id, d.owner, d.origin, d.state.to_string(), d.active))
        .collect()
}

fn thins(dm: &RecordingDm) -> Vec<(u32, Option<u32>)> {
    dm.state
        .lock()
        .unwrap()
        .thins
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect()
}

fn active(dm: &RecordingDm) -> Vec<String> {
    dm.list().unwrap()
}

#[test]
fn base_layer_is_a_new_thin_device_with_a_filesystem_and_the_next_a_snapshot() {
    let r = rig();
    r.pool.apply_layer(1, &[], &mut ok_apply()).unwrap();
    r.pool.apply_layer(2, &[1], &mut ok_apply()).unwrap();
    let calls = r.dm.take_calls();
    let node1 = r.dir.path().join("tp-thin-1");
    let want = [
        "message tp create_thin 1".to_string(),
        "create tp-thin-1 2097152 thin dev:tp 1".into(),
        format!("mkfs {}", node1.display()),
        "remove tp-thin-1".into(),
        "message tp create_snap 2 1".into(),
        "create tp-thin-2 2097152 thin dev:tp 2".into(),
        "remove tp-thin-2".into(),
    ];
    assert_eq!(calls, want);
    assert_eq!(
        rows(&r.pool),
        [
            (1, "layer:1".into(), None, "ready".into(), false),
            (2, "layer:2".into(), Some(1), "ready".into(), false)
        ]
    );
    assert_eq!(thins(&r.dm), [(1, None), (2, Some(1))]);
    assert_eq!(active(&r.dm), ["tp"], "sealed layers have no node");
}

#[test]
fn a_failed_layer_is_discarded_whole_and_its_id_is_never_reused() {
    let r = rig();
    r.pool.apply_layer(1, &[], &mut ok_apply()).unwrap();
    let mut fail = |_root: rustix::fd::BorrowedFd<'_>| -> Result<ApplyStats, Failure> {
        Err(Failure::Input("bad tar".into()))
    };
    let e = r.pool.apply_layer(2, &[1], &mut fail).unwrap_err();
    assert_eq!(e.to_string(), "bad tar");
    assert_eq!(rows(&r.pool)[1].3, "creating");
    r.pool.discard_layer(2).unwrap();
    assert_eq!(thins(&r.dm), [(1, None)]);
    assert_eq!(active(&r.dm), ["tp"]);
    r.pool.apply_layer(3, &[1], &mut ok_apply()).unwrap();
    assert_eq!(
        thins(&r.dm),
        [(1, None), (3, Some(1))],
        "id 2 is not reused"
    );
}

#[test]
fn a_full_pool_fails_the_layer_with_a_clear_reason() {
    let r = rig();
    r.pool.apply_layer(1, &[], &mut ok_apply()).unwrap();
    // (The fake's table says 128 KiB blocks: 10000 of them.)
    r.dm.state.lock().unwrap().status = Some(
        "1 10/1000 10000/10000 - out_of_data_space discard_passdown error_if_no_space - 1024"
            .into(),
    );
    let mut enospc = |_root: rustix::fd::BorrowedFd<'_>| -> Result<ApplyStats, Failure> {
        Err(Failure::Retry(
            "writing usr/bin/x: No space left on device".into(),
        ))
    };
    let e = r.pool.apply_layer(2, &[1], &mut enospc).unwrap_err();
    let Failure::Exhausted(m) = e else {
        panic!("expected Exhausted, got {e:?}")
    };
    assert!(
        m.starts_with("thin pool `tp` is out of space (data 1250.0 of 1250.0 MiB"),
        "{m}"
    );
    assert!(!m.contains('\n'));
}

#[test]
fn cleanup_finishes_what_a_crash_left_and_reactivates_what_should_be_active() {
    let r = rig();
    r.pool.apply_layer(1, &[], &mut ok_apply()).unwrap();
    r.pool.apply_layer(2, &[1], &mut ok_apply()).unwrap();
    r.pool.snapshot_image("img", &[2, 1]).unwrap();
    r.pool.activate("a1", &[2, 1], None, Suid::Ignored).unwrap();
    // A crash while creating layer 3: row `creating`, create_thin recorded as
    // running, the message possibly sent (here: sent) and a node left behind.
    r.pool.new_device("layer:3", Some(2)).unwrap();
    r.pool.activate_node(3 + 2).unwrap();
    // ... and a crash after the registry row, before create_snap was sent.
    let db = crate::statedir::StateDir::new(r.dir.path()).db();
    (|| -> rusqlite::Result<usize> {
        let c = rusqlite::Connection::open(db)?;
        c.execute(
                "INSERT INTO thin_devices (pool, dev_id, owner, origin, sectors, state, created_at) VALUES ('tp', 6, 'layer:4', 2, 1, 'creating', 0)",
                [],
            )?;
            c.execute("UPDATE thin_ids SET next_dev_id = 7", [])?;
            c.execute(
                "INSERT INTO pool_ops (pool, op, dev_id, detail, state, started_at) VALUES ('tp', 'create_snap', 6, 'layer:4', 'running', 0)",
                [],
            )
    })()
    .unwrap();
    // A reboot: every node is gone but the pool's.
    r.dm.state.lock().unwrap().devices.retain(|k, _| k == "tp");
    let p = reopen(&r.dir, &r.dm);
    let known = Known {
        layers: vec![1, 2],
        images: vec!["img".into()],
        activations: vec!["a1".into()],
    };
    let rep = p.cleanup(&known).unwrap();
    assert_eq!(rep.removed, 2, "{rep:?}");
    assert_eq!(rep.reactivated, 2);
    assert_eq!(rep.interrupted_ops, 1);
    assert_eq!(
        thins(&r.dm),
        [(1, None), (2, Some(1)), (3, Some(2)), (4, Some(2))]
    );
    assert_eq!(active(&r.dm), ["tp", "tp-thin-3", "tp-thin-4"]);
    let owners: Vec<String> = rows(&p).into_iter().map(|r| r.1).collect();
    assert_eq!(owners, ["layer:1", "layer:2", "image:img", "act:a1"]);
    // The next id continues past everything ever allocated.
    p.apply_layer(9, &[2, 1], &mut ok_apply()).unwrap();
    assert_eq!(rows(&p).last().unwrap().0, 7);
    // gc's view: nothing references the image or the activation any more.
    let rep = p
        .cleanup(&Known {
            layers: vec![1],
            ..Known::default()
        })
        .unwrap();
    assert_eq!(rep.removed, 4);
    assert_eq!(thins(&r.dm), [(1, None)]);
    assert_eq!(active(&r.dm), ["tp"]);
}

#[test]
fn image_snapshots_are_kept_across_reruns_and_replaced_when_the_top_changes() {
    let r = rig();
    r.pool.apply_layer(1, &[], &mut ok_apply()).unwrap();
    let a = r.pool.snapshot_image("img", &[1]).unwrap();
    let b = r.pool.snapshot_image("img", &[1]).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.fstype, "ext4");
    r.pool.apply_layer(2, &[1], &mut ok_apply()).unwrap();
    let c = r.pool.snapshot_image("img", &[2, 1]).unwrap();
    assert_ne!(a.device, c.device);
    let owners: Vec<(String, Option<u32>)> =
        rows(&r.pool).into_iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(
        owners,
        [
            ("layer:1".to_string(), None),
            ("layer:2".to_string(), Some(1)),
            ("image:img".to_string(), Some(3))
        ]
    );
}

#[test]
fn activation_is_a_writable_snapshot_and_deactivation_removes_it() {
    let r = rig();
    r.pool.apply_layer(1, &[], &mut ok_apply()).unwrap();
    r.dm.take_calls();
    let mp = r.dir.path().join("mp");
    let info = r
        .pool
        .activate("a1", &[1], Some(&mp), Suid::Ignored)
        .unwrap();
    assert_eq!(info.mountpoint.as_deref(), Some(mp.to_str().unwrap()));
    assert!(
        r.pool.activate("a1", &[1], None, Suid::Ignored).is_err(),
        "names are unique"
    );
    r.pool.deactivate("a1", None).unwrap();
    let calls = r.dm.take_calls();
    assert_eq!(calls[0], "message tp create_snap 2 1");
    assert!(
        calls.contains(&"message tp delete 2".to_string()),
        "{calls:?}"
    );
    assert_eq!(thins(&r.dm), [(1, None)]);
}

#[test]
fn a_missing_pool_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let dm = Arc::new(RecordingDm::default());
    let e = ThinPool::open(
        &crate::statedir::StateDir::new(dir.path()),
        ThinConfig::default(),
        dm,
        Arc::new(RecordingMounts::default()),
    )
    .err()
    .unwrap();
    assert!(
        e.to_string()
            .starts_with("no device-mapper thin pool named `tarpool`"),
        "{e}"
    );
}

#[test]
fn pool_init_writes_sparse_files_and_a_thin_pool_table() {
    let dir = tempfile::tempdir().unwrap();
    let dm = RecordingDm::default();
    let cfg = ThinConfig::default();
    ThinPool::init(
        &crate::statedir::StateDir::new(dir.path()),
        &cfg,
        &dm,
        Some("640M"),
        Some("16M"),
        None,
    )
    .unwrap();
    let data = dir.path().join("thinpool/data.img");
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 640 << 20);
    let calls = dm.take_calls();
    assert_eq!(
        calls.last().unwrap(),
        "create tarpool 1310720 thin-pool /dev/loop-fake /dev/loop-fake 128 4096 2 error_if_no_space skip_block_zeroing"
    );
    assert!(
        ThinPool::init(
            &crate::statedir::StateDir::new(dir.path()),
            &cfg,
            &dm,
            Some("640M"),
            None,
            None
        )
        .is_err(),
        "exists"
    );
    for (d, m, b) in [
        ("512K", "16M", "64K"),
        ("640M", "1M", "64K"),
        ("640M", "16M", "96K"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        assert!(ThinPool::init(
            &crate::statedir::StateDir::new(dir.path()),
            &cfg,
            &RecordingDm::default(),
            Some(d),
            Some(m),
            Some(b)
        )
        .is_err());
    }
}

fn check_size(input: &str, expected: Result<u64, ()>) {
    assert_eq!(parse_size(input).map_err(|_| ()), expected, "{input}");
}

#[test]
fn sizes() {
    check_size("640M", Ok(640 << 20));
    check_size("4G", Ok(4 << 30));
    check_size("64K", Ok(64 << 10));
    check_size("64KiB", Ok(64 << 10));
    check_size("512", Ok(512));
    check_size("1 G", Ok(1 << 30));
    check_size("", Err(()));
    check_size("G", Err(()));
    check_size("4X", Err(()));
    check_size("99999999999T", Err(()));
}

fn check_status(line: &str, expected: Result<(u64, u64, &str, bool), ()>) {
    let got = parse_pool_status(line, 65536)
        .map(|u| {
            (
                u.data_used_bytes,
                u.meta_used_bytes,
                u.mode.clone(),
                u.out_of_space(),
            )
        })
        .map_err(|_| ());
    let expected = expected.map(|(d, m, mode, full)| (d, m, mode.to_string(), full));
    assert_eq!(got, expected, "{line}");
}

#[test]
fn pool_status_lines() {
    check_status(
        "0 166/4096 1552/10240 - rw discard_passdown error_if_no_space - 1024",
        Ok((1552 * 65536, 166 * 4096, "rw", false)),
    );
    check_status(
        "3 200/4096 10240/10240 - out_of_data_space discard_passdown error_if_no_space - 1024",
        Ok((10240 * 65536, 200 * 4096, "out_of_data_space", true)),
    );
    check_status("Fail", Err(()));
    check_status("0 1/2", Err(()));
    check_status("0 x/2 3/4 - rw", Err(()));
}

#[test]
fn ids_someone_else_holds_are_skipped_never_deleted() {
    let r = rig();
    // Thin 1 and 2 exist in the pool, made by another user of it.
    r.dm.state
        .lock()
        .unwrap()
        .thins
        .extend([(1, None), (2, None)]);
    r.pool.apply_layer(1, &[], &mut ok_apply()).unwrap();
    assert_eq!(rows(&r.pool)[0].0, 3);
    assert_eq!(thins(&r.dm), [(1, None), (2, None), (3, None)]);
    r.pool.discard_layer(1).unwrap();
    assert_eq!(thins(&r.dm), [(1, None), (2, None)], "only our own id goes");
    let rep = r.pool.cleanup(&Known::default()).unwrap();
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert_eq!(thins(&r.dm), [(1, None), (2, None)]);
}

#[test]
fn a_busy_device_does_not_stop_cleanup_and_is_retried() {
    let r = rig();
    r.pool.apply_layer(1, &[], &mut ok_apply()).unwrap();
    r.pool.activate("a1", &[1], None, Suid::Ignored).unwrap();
    r.pool.activate("a2", &[1], None, Suid::Ignored).unwrap();
    // a1 is mounted by someone: its node cannot go.
    r.dm.state.lock().unwrap().busy.insert("tp-thin-2".into());
    let known = Known {
        layers: vec![1],
        ..Known::default()
    };
    let rep = r.pool.cleanup(&known).unwrap();
    assert_eq!(rep.errors.len(), 1, "{rep:?}");
    assert!(rep.errors[0].starts_with("thin 2 (act:a1): "), "{rep:?}");
    assert_eq!(rep.removed, 1, "a2 went");
    let act = rows(&r.pool).into_iter().find(|d| d.1 == "act:a1").unwrap();
    assert_eq!((act.3.as_str(), act.4), ("ready", true), "kept as it was");
    r.dm.state.lock().unwrap().busy.clear();
    let rep = r.pool.cleanup(&known).unwrap();
    assert!(rep.errors.is_empty());
    assert_eq!(thins(&r.dm), [(1, None)]);
    assert_eq!(active(&r.dm), ["tp"]);
}

#[test]
fn snapshots_keep_their_origins_size() {
    let r = rig();
    r.pool.apply_layer(1, &[], &mut ok_apply()).unwrap();
    // The configured volume size changes; layer 1 stays 1 GiB, and so do
    // its snapshots.
    let cfg = ThinConfig {
        pool: "tp".into(),
        volume_size: "2G".into(),
        ..ThinConfig::default()
    };
    let p = ThinPool::open(
        &crate::statedir::StateDir::new(r.dir.path()),
        cfg,
        r.dm.clone(),
        Arc::new(RecordingMounts::default()),
    )
    .unwrap();
    r.dm.take_calls();
    p.activate("a", &[1], None, Suid::Ignored).unwrap();
    assert!(r
        .dm
        .take_calls()
        .contains(&"create tp-thin-2 2097152 thin dev:tp 2".to_string()));
    p.apply_layer(2, &[], &mut ok_apply()).unwrap();
    assert!(r
        .dm
        .take_calls()
        .contains(&"create tp-thin-3 4194304 thin dev:tp 3".to_string()));
}
