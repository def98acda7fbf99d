//! `drive()` and the crash-resume decisions, without root: a real store,
//! blob store, directory source and format steps, and a recording fake
//! snapshotter ([`FakeSnapshotter`]: it stores nothing and applies nothing,
//! it records what it was asked and answers as told). The real backends
//! are tested end to end (tests/e2e) and in the VM (tests/vm).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{discover, drive, recover};
use crate::backend::{ActivationInfo, ApplyFn, Cleanup, Known, Snapshotter};
use crate::core::machine::{FailureKind, RetryPolicy};
use crate::core::policy::Policy;
use crate::core::states::{ImageState, RunStatus};
use crate::ctx::{Ctx, Parts};
use crate::error::Failure;
use crate::extract::ApplyStats;

/// A snapshotter that records each call as a line of text and applies
/// nothing; `fail_apply` makes the next applies fail with that error.
#[derive(Default)]
struct FakeSnapshotter {
    calls: Mutex<Vec<String>>,
    fail_apply: Mutex<Option<Failure>>,
}

impl FakeSnapshotter {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Snapshotter for FakeSnapshotter {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn apply_layer(
        &self,
        id: i64,
        parents: &[i64],
        _apply: &mut ApplyFn<'_>,
    ) -> Result<ApplyStats, Failure> {
        self.record(format!("apply {id} on {parents:?}"));
        if let Some(e) = &*self.fail_apply.lock().unwrap() {
            return Err(e.clone());
        }
        Ok(ApplyStats {
            entries: 3,
            bytes: 100,
            ..ApplyStats::default()
        })
    }

    fn sync_layer(&self, id: i64) -> Result<(), Failure> {
        self.record(format!("sync {id}"));
        Ok(())
    }

    fn discard_layer(&self, id: i64) -> std::io::Result<()> {
        self.record(format!("discard {id}"));
        Ok(())
    }

    fn snapshot_image(&self, name: &str, chain: &[i64]) -> Result<ActivationInfo, Failure> {
        self.record(format!("snapshot {name} of {chain:?}"));
        Ok(ActivationInfo {
            fstype: "fake".into(),
            options: String::new(),
            mountpoint: None,
            device: None,
        })
    }

    fn activate(
        &self,
        act: &str,
        _: &[i64],
        _: Option<&std::path::Path>,
        _: crate::sys::Suid,
    ) -> std::io::Result<ActivationInfo> {
        unreachable!("the engine does not activate ({act})")
    }

    fn mount_activation(&self, act: &str, _: &[i64], _: &std::path::Path) -> std::io::Result<()> {
        unreachable!("the engine does not mount activations ({act})")
    }

    fn mount_activation_idmapped(
        &self,
        act: &str,
        _: &[i64],
        _: &std::path::Path,
        _: &std::path::Path,
        _: rustix::fd::BorrowedFd<'_>,
        _: u32,
    ) -> std::io::Result<()> {
        unreachable!("the engine does not mount activations ({act})")
    }

    fn deactivate(&self, act: &str, _: Option<&std::path::Path>) -> std::io::Result<()> {
        unreachable!("the engine does not deactivate ({act})")
    }

    fn cleanup(&self, known: &Known) -> std::io::Result<Cleanup> {
        self.record(format!("cleanup keeping layers {:?}", known.layers));
        Ok(Cleanup::default())
    }
}

/// A flat root filesystem tar (one layer, no manifest) holding `files`.
fn rootfs_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, body.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// The compiled components, cached once for every test here.
fn steps() -> crate::wasm::Steps {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    crate::wasm::Steps::load(cache.path()).expect("load the format steps")
}

struct Setup {
    dir: tempfile::TempDir,
    ctx: Ctx,
    fake: Arc<FakeSnapshotter>,
}

/// A state directory and a source directory holding `images/NAME.tar` for
/// each of `images`, under a fake snapshotter; retries are quick.
fn setup(images: &[(&str, Vec<u8>)]) -> Setup {
    setup_sources(&[images])
}

/// As [`setup`], with one source directory (`source0`, `source1`, ...) per
/// list of images, configured in that order.
fn setup_sources(sources: &[&[(&str, Vec<u8>)]]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for (i, images) in sources.iter().enumerate() {
        let source = dir.path().join(format!("source{i}"));
        std::fs::create_dir_all(source.join("images")).unwrap();
        for (name, bytes) in *images {
            std::fs::write(source.join(format!("images/{name}.tar")), bytes).unwrap();
        }
        all.push(
            crate::source::parse(source.to_str().unwrap(), &Default::default(), dir.path())
                .unwrap(),
        );
    }
    setup_from(dir, all)
}

/// A state directory in `dir` and `sources`, under a fake snapshotter.
fn setup_from(dir: tempfile::TempDir, all: Vec<Box<dyn crate::source::Source>>) -> Setup {
    let state_dir = crate::statedir::StateDir::new(dir.path().join("state"));
    std::fs::create_dir_all(&*state_dir).unwrap();
    let fake = Arc::new(FakeSnapshotter::default());
    let ctx = Ctx::new(Parts {
        store: crate::store::Store::open(&state_dir.db()).unwrap(),
        blobs: crate::blobs::BlobStore::new(&state_dir).unwrap(),
        steps: steps(),
        backend: fake.clone(),
        sources: crate::source::Sources::new(all).unwrap(),
        policy: Policy::default_policy(),
        retry: RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(1),
            max_attempts: 2,
        },
        unconfined_worker: false,
        shutdown: Arc::new(AtomicBool::new(false)),
        state_dir,
    })
    .unwrap();
    Setup { dir, ctx, fake }
}

/// Discovers the source and drives every run started; the runs' ids.
fn pass(ctx: &Ctx) -> Vec<String> {
    discover(ctx).unwrap();
    let runs: Vec<String> = ctx
        .store
        .active_runs()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    for r in &runs {
        drive(ctx, r).unwrap();
    }
    runs
}

/// The image's executions of `transition` as `name attempt outcome`, in
/// execution order.
fn history_of(ctx: &Ctx, image: &str, transition: &str) -> Vec<String> {
    history(ctx, image)
        .into_iter()
        .filter(|t| t.starts_with(&format!("{transition} ")))
        .collect()
}

/// The image's transitions as `name attempt outcome`, in execution order.
fn history(ctx: &Ctx, image: &str) -> Vec<String> {
    ctx.store
        .transitions_for(image)
        .unwrap()
        .iter()
        .map(|t| format!("{} {} {}", t.name, t.attempt, t.outcome))
        .collect()
}

const EVERY_TRANSITION: [&str; 10] = [
    "check-image-exists 1 ok",
    "download 1 ok",
    "classify 1 ok",
    "parse-manifest 1 ok",
    "fetch-layers 1 ok",
    "check-unpacked 1 ok",
    "unpack-layers 1 ok",
    "create-snapshot 1 ok",
    "update-tracking 1 ok",
    "completed 1 ok",
];

#[test]
fn a_run_goes_through_every_transition_once_and_in_order() {
    let s = setup(&[("a", rootfs_tar(&[("etc/hostname", "a\n")]))]);
    assert_eq!(pass(&s.ctx).len(), 1);
    let img = s.ctx.store.image("a").unwrap().unwrap();
    assert_eq!(img.state, ImageState::Ready, "{img:?}");
    assert_eq!(history(&s.ctx, "a"), EVERY_TRANSITION);
    assert_eq!(
        s.fake.take(),
        ["apply 1 on []", "sync 1", "snapshot a of [1]"]
    );
    // Nothing changed: the next pass starts no run.
    assert!(pass(&s.ctx).is_empty());
    assert_eq!(s.fake.take(), Vec::<String>::new());
}

#[test]
fn a_layer_two_images_share_is_applied_once() {
    let tar = rootfs_tar(&[("bin/sh", "#!")]);
    let s = setup(&[("a", tar.clone()), ("b", tar)]);
    pass(&s.ctx);
    for name in ["a", "b"] {
        let img = s.ctx.store.image(name).unwrap().unwrap();
        assert_eq!(img.state, ImageState::Ready, "{img:?}");
    }
    let calls = s.fake.take();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("apply")).count(),
        1,
        "{calls:?}"
    );
    assert!(
        calls.contains(&"snapshot a of [1]".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"snapshot b of [1]".to_string()),
        "{calls:?}"
    );
}

/// One case: the fake's apply fails with `failure`; the image's end state,
/// failure kind and reason, and the history of unpack-layers.
fn check_apply_failure(failure: Failure, kind: FailureKind, reason: &str, unpack_history: &[&str]) {
    let s = setup(&[("a", rootfs_tar(&[("f", "x")]))]);
    *s.fake.fail_apply.lock().unwrap() = Some(failure);
    pass(&s.ctx);
    let img = s.ctx.store.image("a").unwrap().unwrap();
    assert_eq!(
        (img.state, img.failure_kind, img.error.as_deref()),
        (ImageState::Failed, Some(kind), Some(reason))
    );
    assert_eq!(history_of(&s.ctx, "a", "unpack-layers"), unpack_history);
    // Every failed apply is discarded, in the backend and the store.
    let calls = s.fake.take();
    let applies = calls.iter().filter(|c| c.starts_with("apply")).count();
    let discards = calls.iter().filter(|c| c.starts_with("discard")).count();
    assert_eq!(
        (applies, discards),
        (unpack_history.len(), unpack_history.len()),
        "{calls:?}"
    );
    assert!(s.ctx.store.layers().unwrap().is_empty());
}

#[test]
fn a_failed_apply_is_retried_or_not_by_whose_fault_it_is() {
    check_apply_failure(
        Failure::Retry("the disk is on fire".into()),
        FailureKind::Environment,
        "unpack-layers: gave up after 2 attempts: the disk is on fire",
        &["unpack-layers 1 retry", "unpack-layers 2 failed"],
    );
    check_apply_failure(
        Failure::Input("`etc/x`: a bad entry".into()),
        FailureKind::Input,
        "unpack-layers: `etc/x`: a bad entry",
        &["unpack-layers 1 failed"],
    );
    check_apply_failure(
        Failure::Exhausted("the pool is full".into()),
        FailureKind::Resource,
        "unpack-layers: the pool is full",
        &["unpack-layers 1 failed"],
    );
}

#[test]
fn a_crash_mid_layer_is_resumed_after_recovery() {
    let s = setup(&[("a", rootfs_tar(&[("f", "x")]))]);
    discover(&s.ctx).unwrap();
    let run = s.ctx.store.active_runs().unwrap().remove(0).id;
    // Run up to unpack-layers, then "crash" inside it: the transition begun
    // and a layer begun, neither finished.
    while s.ctx.store.run(&run).unwrap().unwrap().next_step.as_deref() != Some("unpack-layers") {
        let r = s.ctx.store.run(&run).unwrap().unwrap();
        assert_eq!(r.status, RunStatus::Running);
        super::drive::one_transition(&s.ctx, &run).unwrap();
    }
    s.ctx
        .store
        .begin_transition("01CRASHED0000000000000000", &run, "a", "unpack-layers", 1)
        .unwrap();
    let half = s
        .ctx
        .store
        .begin_layer("sha256:half", None, "sha256:half")
        .unwrap();
    s.fake.take();

    recover(&s.ctx).unwrap();
    // The half-applied layer is discarded before anything else.
    assert_eq!(
        s.fake.take(),
        [
            format!("discard {half}"),
            "cleanup keeping layers []".to_string()
        ]
    );
    drive(&s.ctx, &run).unwrap();
    let img = s.ctx.store.image("a").unwrap().unwrap();
    assert_eq!(img.state, ImageState::Ready, "{img:?}");
    // The interrupted execution is on the record as a retry ("interrupted"),
    // then the transition runs again.
    assert_eq!(
        history_of(&s.ctx, "a", "unpack-layers"),
        ["unpack-layers 1 retry", "unpack-layers 1 ok"]
    );
}

/// One case: the run's stored `next_step` and `data`, and the image's
/// recorded failure.
fn check_corrupt_run(next_step: &str, data: &str, reason: &str) {
    let s = setup(&[]);
    s.ctx
        .store
        .create_run("01RUN00000000000000000000", "a", next_step, data, "policy")
        .unwrap();
    drive(&s.ctx, "01RUN00000000000000000000").unwrap();
    let img = s.ctx.store.image("a").unwrap().unwrap();
    assert_eq!(
        (img.state, img.failure_kind, img.error.as_deref()),
        (ImageState::Failed, Some(FailureKind::Input), Some(reason))
    );
    assert_eq!(s.fake.take(), Vec::<String>::new());
    // The run keeps the transition it stopped at.
    let r = s
        .ctx
        .store
        .run("01RUN00000000000000000000")
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.status, r.next_step.as_deref()),
        (RunStatus::Failed, Some(next_step))
    );
}

#[test]
fn a_corrupt_run_fails_its_image_with_one_line() {
    // Regression: this said "completed: unknown transition ...", naming a
    // transition the run never reached.
    check_corrupt_run("frobnicate", "{}", "unknown transition `frobnicate`");
    check_corrupt_run(
        "download",
        "{",
        "download: corrupt run data: EOF while parsing an object at line 1 column 1",
    );
}

#[test]
fn a_cancelled_run_stops_before_its_next_transition() {
    let s = setup(&[("a", rootfs_tar(&[("f", "x")]))]);
    discover(&s.ctx).unwrap();
    let run = s.ctx.store.active_runs().unwrap().remove(0).id;
    assert!(s.ctx.store.request_cancel("a").unwrap());
    drive(&s.ctx, &run).unwrap();
    let img = s.ctx.store.image("a").unwrap().unwrap();
    assert_eq!(img.state, ImageState::Cancelled);
    assert_eq!(history(&s.ctx, "a"), ["check-image-exists 1 cancelled"]);
    assert_eq!(s.fake.take(), Vec::<String>::new());
}

#[test]
fn a_shutdown_leaves_the_run_where_it_is() {
    let s = setup(&[("a", rootfs_tar(&[("f", "x")]))]);
    discover(&s.ctx).unwrap();
    let run = s.ctx.store.active_runs().unwrap().remove(0).id;
    s.ctx
        .shutdown
        .store(true, std::sync::atomic::Ordering::SeqCst);
    drive(&s.ctx, &run).unwrap();
    let r = s.ctx.store.run(&run).unwrap().unwrap();
    assert_eq!(
        (r.status, r.next_step.as_deref()),
        (RunStatus::Running, Some("check-image-exists"))
    );
    assert!(history(&s.ctx, "a").is_empty());
    // A later start drives it to its end.
    s.ctx
        .shutdown
        .store(false, std::sync::atomic::Ordering::SeqCst);
    drive(&s.ctx, &run).unwrap();
    assert_eq!(history(&s.ctx, "a"), EVERY_TRANSITION);
}

#[test]
fn one_pass_serves_every_source_and_a_name_stays_with_the_first() {
    let shared = rootfs_tar(&[("bin/sh", "#!")]);
    let s = setup_sources(&[
        &[("a", shared.clone()), ("b", rootfs_tar(&[("f", "b")]))],
        &[("c", shared), ("b", rootfs_tar(&[("f", "other b")]))],
    ]);
    let (names, summary) = discover(&s.ctx).unwrap();
    assert_eq!(names, ["a", "b", "c"]);
    let second = format!("dir:{}", s.dir.path().join("source1").display());
    assert_eq!(
        summary.rejected,
        [(
            "images/b.tar".to_string(),
            format!(
                "image `b` is also in dir:{}, configured first: image names must be unique across sources",
                s.dir.path().join("source0").display()
            )
        )]
    );
    assert_eq!(s.ctx.store.rejected().unwrap()[0].0, second);
    for r in s.ctx.store.active_runs().unwrap() {
        drive(&s.ctx, &r.id).unwrap();
    }
    for name in ["a", "b", "c"] {
        let img = s.ctx.store.image(name).unwrap().unwrap();
        assert_eq!(img.state, ImageState::Ready, "{img:?}");
    }
    // `c` is `a`'s bytes from another source: one layer, applied once.
    let calls = s.fake.take();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("apply")).count(),
        2,
        "{calls:?}"
    );
    let c = s.ctx.store.image("c").unwrap().unwrap();
    let a = s.ctx.store.image("a").unwrap().unwrap();
    assert_eq!(c.top_chain, a.top_chain);
}

/// A fake source whose listing always fails (a real one fails so for a
/// network or credentials problem; a directory source lists what is there).
struct Unlistable;

impl crate::source::Source for Unlistable {
    fn uri(&self) -> String {
        "fake://unlistable".into()
    }

    fn list(&self) -> Result<crate::source::Listing, crate::source::SourceError> {
        Err(crate::source::SourceError::Io("the network is down".into()))
    }

    fn open(
        &self,
        key: &str,
    ) -> Result<
        (Box<dyn std::io::Read + Send>, crate::core::names::Listed),
        crate::source::SourceError,
    > {
        Err(crate::source::SourceError::NotFound(key.into()))
    }
}

#[test]
fn a_source_that_cannot_be_listed_is_skipped_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("source0/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("a.tar"), rootfs_tar(&[("f", "x")])).unwrap();
    let first = crate::source::parse(
        dir.path().join("source0").to_str().unwrap(),
        &Default::default(),
        dir.path(),
    )
    .unwrap();
    let s = setup_from(dir, vec![first, Box::new(Unlistable)]);
    let (names, summary) = discover(&s.ctx).unwrap();
    assert_eq!(names, ["a"]);
    assert_eq!(
        summary.unlisted,
        [(
            "fake://unlistable".to_string(),
            "source I/O: the network is down".to_string()
        )]
    );
    // With no source listable, the pass fails.
    let s = setup_from(tempfile::tempdir().unwrap(), vec![Box::new(Unlistable)]);
    let e = discover(&s.ctx).unwrap_err();
    assert_eq!(e.to_string(), "source I/O: the network is down");
}

#[test]
fn a_run_whose_source_is_no_longer_configured_retries_unsettled() {
    let s = setup(&[]);
    let data = serde_json::json!({ "source": "dir:/nowhere", "fingerprint": "f", "unit": {
        "name": "a", "kind": "archive",
        "objects": [{ "key": "images/a.tar", "member": "", "size": 1, "stamp": "s" }] },
        "blobs": {}, "kinds": {}, "archive": null, "format": null, "layers": [], "top_chain": null });
    s.ctx
        .store
        .create_run(
            "01RUN00000000000000000000",
            "a",
            "check-image-exists",
            &data.to_string(),
            "p",
        )
        .unwrap();
    drive(&s.ctx, "01RUN00000000000000000000").unwrap();
    let img = s.ctx.store.image("a").unwrap().unwrap();
    assert_eq!(
        (img.state, img.failure_kind, img.error.as_deref()),
        (
            ImageState::Failed,
            Some(FailureKind::Environment),
            Some("check-image-exists: gave up after 2 attempts: the image's source dir:/nowhere is no longer configured")
        )
    );
}
