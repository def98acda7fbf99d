//! `tarpool steps try FILE.wasm IMAGE`: the configured step chains with a
//! candidate component inserted, run against a local image, printing what
//! they answered. Nothing of the state directory is read or written: the
//! compiled steps go to a temporary directory.
//!
//! The image is a directory laid out as a bucket's image prefix (an OCI
//! layout, numbered layers, a rootfs directory) or an uncompressed image
//! archive (docker save, OCI archive), compressed or not. Its layers'
//! entries are shown to the inspect steps; a compressed archive or layer is
//! first decompressed by the confined extraction worker into the temporary
//! directory (tarpool's own process decodes nothing), under the policy's
//! limits.

use std::fs::File;
use std::io::Read as _;

use super::*;
use crate::archive::{self, IndexedMember};
use crate::core::plan::PlannedLayer;
use crate::extract::view::{Mode, TarCheck};
use crate::model::{BlobKind, LayerMedia, Member, UnitKind};
use crate::wasm::{Answer, ComponentSpec, ImageInfo, Steps, StepsConfig, Verdict};
use rustix::fd::AsFd as _;

/// The largest member the manifest step may read (as `max-json-bytes`).
const MAX_READ: u64 = 4 << 20;
/// Stream bytes fed to the tar check at a time.
const CHUNK: usize = 1 << 20;

/// The chains with `file` inserted where its world goes: first among the
/// classify and manifest components (it is asked first), in place of the
/// tar check, last among the inspect steps.
fn with_candidate(steps: &StepsConfig, step: &str, file: &Path, sha256: &str) -> StepsConfig {
    let spec = ComponentSpec::File {
        path: file.to_path_buf(),
        sha256: sha256.to_string(),
    };
    let mut s = steps.clone();
    match step {
        "classify" => s.classify.insert(0, spec),
        "manifest" => s.manifest.insert(0, spec),
        "tar-check" => s.tar_check = spec,
        _ => s.inspect.push(spec),
    }
    s
}

/// Where the image's members are: a directory's regular files (found by
/// a walk that follows no symlink; nothing else is read), or an archive's
/// index (the archive's path, the file open).
enum Image {
    Dir(PathBuf, Vec<Member>),
    Archive(PathBuf, File, Vec<IndexedMember>),
}

impl Image {
    fn dir(root: &Path) -> Result<Image> {
        let mut out = Vec::new();
        walk(root, root, &mut out)?;
        Ok(Image::Dir(root.to_path_buf(), out))
    }

    fn members(&self) -> Result<Vec<Member>> {
        Ok(match self {
            Image::Dir(_, members) => members.clone(),
            Image::Archive(_, _, index) => index
                .iter()
                .map(|m| Member {
                    name: m.name.clone(),
                    size: m.size,
                })
                .collect(),
        })
    }

    /// A member's bytes, at most `cap`.
    fn read(&self, name: &str, cap: u64) -> std::result::Result<Vec<u8>, String> {
        match self {
            Image::Dir(..) => {
                let (path, _, _) = self.location(name).map_err(|e| e.to_string())?;
                let f = File::open(path).map_err(|e| format!("`{name}`: {e}"))?;
                let mut bytes = Vec::new();
                f.take(cap + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("`{name}`: {e}"))?;
                if bytes.len() as u64 > cap {
                    return Err(format!("`{name}` is larger than {cap} bytes"));
                }
                Ok(bytes)
            }
            Image::Archive(_, f, index) => {
                let m = index
                    .iter()
                    .find(|m| m.name == name)
                    .ok_or_else(|| format!("no member `{name}`"))?;
                archive::read_member(f, m, cap)
            }
        }
    }

    /// Where a member's bytes are: (file, offset, length).
    fn location(&self, name: &str) -> Result<(PathBuf, u64, u64)> {
        match self {
            Image::Dir(root, members) => {
                let m = members
                    .iter()
                    .find(|m| m.name == name)
                    .with_context(|| format!("no member `{name}`"))?;
                Ok((root.join(name), 0, m.size))
            }
            Image::Archive(path, _, index) => {
                let m = index
                    .iter()
                    .find(|m| m.name == name)
                    .with_context(|| format!("no member `{name}`"))?;
                Ok((path.clone(), m.offset, m.size))
            }
        }
    }

    /// A member's whole stream.
    fn open(&self, name: &str) -> Result<Box<dyn std::io::Read>> {
        let (path, offset, len) = self.location(name)?;
        Ok(match self {
            Image::Dir(..) => Box::new(File::open(path)?),
            Image::Archive(_, f, _) => Box::new(archive::range(f.try_clone()?, offset, len)?),
        })
    }
}

/// The regular files under `dir`, named relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<Member>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let t = e.file_type()?;
        let p = e.path();
        if t.is_dir() {
            walk(root, &p, out)?;
        } else if t.is_file() {
            let name = p.strip_prefix(root)?.to_string_lossy().into_owned();
            out.push(Member {
                name,
                size: e.metadata()?.len(),
            });
        }
    }
    if out.len() > archive::MAX_MEMBERS {
        bail!("more than {} files", archive::MAX_MEMBERS);
    }
    Ok(())
}

fn answer_json(a: &Answer) -> serde_json::Value {
    json!({
        "component": a.component,
        "verdict": match a.verdict { Verdict::Allow => "allow", Verdict::Deny => "deny", Verdict::Skip => "skip" },
        "rule": a.rule,
        "reason": a.reason,
    })
}

/// `tarpool steps try FILE IMAGE`, with the configured chains and policy.
pub(super) fn steps_try(
    steps: &StepsConfig,
    policy: &Policy,
    file: &Path,
    image: &Path,
    json: bool,
) -> Result<u8> {
    let abs = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let wasm = std::fs::read(&abs).with_context(|| format!("reading {}", abs.display()))?;
    let checked = match crate::wasm::check_component(&wasm) {
        Ok(c) => c,
        Err(why) => {
            println!("{}: refused: {why}", abs.display());
            return Ok(1);
        }
    };
    let step = checked.description.world.config_key().unwrap_or_default();
    let config = with_candidate(steps, step, &abs, &checked.sha256);
    let cache = tempfile::tempdir().context("a temporary directory for the compiled steps")?;
    let steps = Steps::load_with(cache.path(), &config).context("loading the steps")?;
    let mut report = serde_json::Map::new();
    report.insert("candidate".into(), json!({"component": abs, "step": step}));

    // The image as a unit: a directory is a prefix, a file an archive.
    let meta = std::fs::metadata(image).with_context(|| format!("{}", image.display()))?;
    let (kind, img) = if meta.is_dir() {
        (UnitKind::Prefix, Image::dir(image)?)
    } else {
        let mut head = Vec::new();
        File::open(image)?.take(64 << 10).read_to_end(&mut head)?;
        let c = steps.classify(&head, meta.len())?;
        report.insert(
            "classify".into(),
            json!({"kind": format!("{:?}", c.kind).to_lowercase(), "detail": c.detail}),
        );
        let path = match compression(c.kind) {
            Some(media) => {
                let out = cache.path().join("archive.tar");
                decompress(&out, image, 0, meta.len(), media, policy)
                    .with_context(|| format!("{}", image.display()))?;
                out
            }
            None if c.kind == BlobKind::Tar => image.to_path_buf(),
            None => bail!(
                "{}: {} ({:?}): steps try reads an image archive or a directory",
                image.display(),
                c.detail,
                c.kind
            ),
        };
        let f = File::open(&path)?;
        let mut check = steps.tar_check(Mode::Archive, policy)?;
        let index = archive::index(&f, &mut check).map_err(|e| anyhow::anyhow!("{e}"))?;
        (UnitKind::Archive, Image::Archive(path, f, index))
    };
    let img = std::sync::Arc::new(img);
    let members = img.members()?;
    let reader = {
        let img = img.clone();
        move |name: &str| img.read(name, MAX_READ)
    };
    let parsed = steps.parse_manifest(kind, &members, Box::new(reader));
    let (layout, answered) = match parsed {
        Ok(p) => p,
        Err(e) => {
            report.insert("manifest".into(), json!({"error": e.to_string()}));
            return finish(report, json, 1);
        }
    };
    report.insert(
        "manifest".into(),
        json!({
            "component": answered.component,
            "format": layout.format,
            "layers": layout.layers,
            "config_digest": layout.config_digest,
            "config": layout.config,
        }),
    );

    let inspectors = steps.inspectors();
    if !inspectors.is_empty() {
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = ImageInfo {
            name: name.clone(),
            format: layout.format.clone(),
            layers: u32::try_from(layout.layers.len()).unwrap_or(u32::MAX),
            config: layout.config.clone(),
        };
        let answers = inspectors.check_image(&info)?;
        report.insert(
            "image".into(),
            answers.iter().map(answer_json).collect::<Vec<_>>().into(),
        );
        let mut layers = Vec::new();
        for (i, l) in layout.layers.iter().enumerate() {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            layers.push(inspect_layer(
                &steps,
                policy,
                &img,
                n,
                &l.member,
                cache.path(),
            )?);
        }
        report.insert("layers".into(), layers.into());
    }
    finish(report, json, 0)
}

/// The media a compressed blob of `kind` is decompressed as, if it is one.
fn compression(kind: BlobKind) -> Option<LayerMedia> {
    match kind {
        BlobKind::Gzip => Some(LayerMedia::Gzip),
        BlobKind::Zstd => Some(LayerMedia::Zstd),
        _ => None,
    }
}

/// Has the confined extraction worker decompress `len` bytes at `offset`
/// of `blob` (compressed as `media`) into the new file `out`, under
/// `policy`'s limits.
fn decompress(
    out: &Path,
    blob: &Path,
    offset: u64,
    len: u64,
    media: LayerMedia,
    policy: &Policy,
) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let layer = PlannedLayer {
        member: String::new(),
        media,
        blob: String::new(),
        offset,
        len,
        digest: None,
        diff_id: None,
        chain_id: None,
    };
    let req = crate::worker::Request::new(
        crate::worker::Task::Decompress,
        blob.to_path_buf(),
        layer,
        0,
        policy.clone(),
    );
    let mut verdicts = Vec::new();
    crate::worker::decompress(req, file.as_fd(), &mut verdicts)
        .map_err(|f| anyhow::anyhow!("decompressing: {f}"))?;
    Ok(())
}

/// Layer `n` (member `member`) through the tar check and the inspect
/// steps: every answer about its entries and the files they read. A
/// compressed layer is decompressed first, into `tmp`.
fn inspect_layer(
    steps: &Steps,
    policy: &Policy,
    img: &Image,
    n: u32,
    member: &str,
    tmp: &Path,
) -> Result<serde_json::Value> {
    let mut head = vec![0u8; 64 << 10];
    let got = crate::source::read_up_to(&mut img.open(member)?, &mut head)?;
    head.truncate(got);
    let (blob, offset, size) = img.location(member)?;
    let c = steps.classify(&head, size)?;
    let open: Box<dyn Fn() -> Result<Box<dyn std::io::Read>>> = match compression(c.kind) {
        Some(media) => {
            let out = tmp.join(format!("layer-{n}.tar"));
            decompress(&out, &blob, offset, size, media, policy)
                .with_context(|| format!("layer {n} ({member})"))?;
            Box::new(move || Ok(Box::new(File::open(&out)?) as Box<dyn std::io::Read>))
        }
        None if matches!(c.kind, BlobKind::Tar | BlobKind::Empty) => {
            Box::new(move || img.open(member))
        }
        None => {
            return Ok(json!({
                "layer": n,
                "member": member,
                "inspected": false,
                "why": format!("{}: not a layer tarpool reads", c.detail),
            }))
        }
    };
    let stream = open()?;
    let mut check = steps.tar_check(Mode::Layer, policy)?;
    let mut answers = Vec::new();
    // Files whose bytes inspect steps want: (entry, the steps' places).
    let mut wanted = Vec::new();
    let inspectors = steps.inspectors();
    // Files each step has asked for, as in the worker.
    let mut budget = crate::wasm::ContentsBudget::new(inspectors, policy.max_contents_files.limit);
    let mut judge = |entries: Vec<crate::extract::view::Entry>| -> Result<bool> {
        let judged = inspectors.check_entries(n, &entries)?;
        for (i, a) in judged.answers {
            answers.push(entry_answer(&entries[i], &a, "header"));
            if a.verdict == Verdict::Deny {
                return Ok(false);
            }
        }
        for (i, places) in judged.wants {
            budget
                .want(&places)
                .map_err(|why| anyhow::anyhow!("layer {n}: {why} (rule max-contents-files)"))?;
            wanted.push((entries[i].clone(), places));
        }
        Ok(true)
    };
    // The stream from byte 0, fed from where the check wants.
    let mut rest = stream;
    let mut buf = vec![0u8; CHUNK];
    let (mut base, mut want) = (0u64, 0u64);
    let mut going = true;
    while going {
        let k = crate::source::read_up_to(&mut rest, &mut buf)?;
        if k == 0 {
            break;
        }
        let end = base + k as u64;
        if want < end {
            let from = usize::try_from(want.saturating_sub(base)).unwrap_or(0);
            let p = check
                .feed(want, &buf[from..k])
                .map_err(|e| anyhow::anyhow!("layer {n}: {e}"))?;
            want = p.want;
            going = judge(p.entries)?;
        }
        base = end;
    }
    if going {
        let p = check
            .finish(base)
            .map_err(|e| anyhow::anyhow!("layer {n}: {e}"))?;
        going = judge(p.entries)?;
    }
    if going && !wanted.is_empty() {
        answers.extend(judge_contents(steps, open()?, n, &wanted)?);
    }
    Ok(json!({"layer": n, "member": member, "inspected": true, "answers": answers}))
}

/// The answers about the bytes of the `wanted` files of layer `n`, read
/// from their data spans in a second pass over the layer's `stream`, up to
/// the first `deny`.
fn judge_contents(
    steps: &Steps,
    mut stream: Box<dyn std::io::Read>,
    n: u32,
    wanted: &[(crate::extract::view::Entry, Vec<usize>)],
) -> Result<Vec<serde_json::Value>> {
    let mut at = 0u64;
    let mut out = Vec::new();
    for (e, places) in wanted {
        let gap = e
            .data_offset
            .checked_sub(at)
            .with_context(|| format!("layer {n}: the tar check gave data spans out of order"))?;
        std::io::copy(&mut (&mut stream).take(gap), &mut std::io::sink())?;
        let mut bytes = Vec::new();
        (&mut stream).take(e.data_size).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != e.data_size {
            bail!("layer {n}: the layer ends inside a file's data");
        }
        at = e
            .data_offset
            .checked_add(e.data_size)
            .with_context(|| format!("layer {n}: the tar check gave a data span past 2^64"))?;
        for a in steps.inspectors().check_contents(n, e, places, &bytes)? {
            out.push(entry_answer(e, &a, "contents"));
            if a.verdict == Verdict::Deny {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// An answer about an entry's header or contents, as the report has it.
fn entry_answer(e: &crate::extract::view::Entry, a: &Answer, about: &str) -> serde_json::Value {
    let mut j = answer_json(a);
    j["path"] = crate::core::names::printable(&String::from_utf8_lossy(&e.path)).into();
    j["about"] = about.into();
    j
}

/// Prints the report: as JSON, or as lines for a person.
fn finish(report: serde_json::Map<String, serde_json::Value>, json: bool, code: u8) -> Result<u8> {
    let v = serde_json::Value::Object(report);
    if json {
        println!("{v}");
        return Ok(code);
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let c = &v["candidate"];
    println!("candidate: {} ({} step)", s(&c["component"]), s(&c["step"]));
    if let Some(k) = v.get("classify") {
        println!("classify: {} ({})", s(&k["kind"]), s(&k["detail"]));
    }
    let m = &v["manifest"];
    if let Some(e) = m.get("error") {
        println!("manifest: failed: {}", s(e));
        return Ok(code);
    }
    println!(
        "manifest: {} (answered by {})",
        s(&m["format"]),
        s(&m["component"])
    );
    for (i, l) in m["layers"].as_array().into_iter().flatten().enumerate() {
        println!(
            "  layer {}: {} {} digest {} diff-id {}",
            i + 1,
            s(&l["member"]),
            s(&l["media"]),
            l["digest"].as_str().unwrap_or("-"),
            l["diff_id"].as_str().unwrap_or("-")
        );
    }
    match m["config"].as_object() {
        Some(cfg) => println!(
            "  config: user `{}`, entrypoint {}, cmd {}, env {}",
            s(&cfg["user"]),
            cfg["entrypoint"],
            cfg["cmd"],
            cfg["env"]
        ),
        None => println!("  config: none"),
    }
    let said = |a: &serde_json::Value| {
        format!(
            "{} {}{}{}: {} [{}]",
            s(&a["verdict"]),
            s(&a["rule"]),
            a.get("path")
                .map(|p| format!(" {}", s(p)))
                .unwrap_or_default(),
            if a["about"] == "contents" {
                " (its contents)"
            } else {
                ""
            },
            s(&a["reason"]),
            s(&a["component"])
        )
    };
    if let Some(answers) = v["image"].as_array() {
        println!(
            "inspect, the image: {}",
            if answers.is_empty() { "no answer" } else { "" }
        );
        for a in answers {
            println!("  {}", said(a));
        }
    }
    for l in v["layers"].as_array().into_iter().flatten() {
        if l["inspected"] == true {
            let answers = l["answers"].as_array().cloned().unwrap_or_default();
            println!(
                "inspect, layer {}: {} answer{}",
                l["layer"],
                answers.len(),
                if answers.len() == 1 { "" } else { "s" }
            );
            for a in &answers {
                println!("  {}", said(a));
            }
        } else {
            println!(
                "inspect, layer {}: not inspected: {}",
                l["layer"],
                s(&l["why"])
            );
        }
    }
    Ok(code)
}
