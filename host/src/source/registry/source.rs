//! The registry source: one `registry://HOST/REPO[:TAG|@DIGEST]` reference
//! served as one image, or a whole registry (`registry://HOST`) served as
//! every tag of every repository its catalog lists ([`super::catalog`]).
//!
//! Discovery resolves each reference with one `HEAD` of its manifest: the
//! image's one object is the manifest or index it names (member
//! `manifest`), stamped with its digest, so a moved tag changes the image's
//! fingerprint and an unchanged one costs that one request. A reference the
//! registry refuses (401, 403, 404) is still an image: its run fails with
//! the registry's answer, and only that image. Everything else is fetched
//! by digest only: the manifest step names what it reads
//! (`manifests/sha256/<hex>`, `blobs/sha256/<hex>`, see
//! [`RegistrySource::member_reader`]) and fetch-layers the layers
//! ([`RegistrySource::fetch_blobs`]); each is checked against its digest
//! (and its declared size) while it streams, before it is stored.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::answers::RegistryError;
use super::auth;
use super::catalog;
use super::client::Registry;
use super::fetch::{self, Inner, Want};
use crate::blobs::BlobStore;
use crate::core::names::{printable, Discovery, Listed, Rejected, Unit, UnitObject};
use crate::core::registry::{default_name, valid_repo, valid_tag, Platform, RegistrySpec, Target};
use crate::model::UnitKind;
use crate::source::{run_on, Listing, Source, SourceError};
use crate::wasm::{ListingStep, MemberReader};

/// The largest manifest or index fetched (the distribution specification
/// has registries accept manifests of at least 4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

/// The `[registry]` table of the configuration: what every registry
/// source is configured with besides its reference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// A credentials file (docker's or podman's form) looked in before
    /// `REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json` and
    /// docker's `config.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<PathBuf>,
    /// Blobs of one image fetched at once.
    pub parallel: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auth_file: None,
            parallel: 4,
        }
    }
}

/// Where a member reader puts a failure that is not the image's.
pub type FailedSlot = Arc<Mutex<Option<SourceError>>>;

/// One image of the registry.
#[derive(Debug, Clone)]
struct Image {
    repo: String,
    /// The tag or digest the reference names.
    reference: String,
    /// The image's object key: `REPO:TAG` or `REPO@DIGEST`, and ` for
    /// OS/ARCH[/VARIANT]` when `platform=` is given.
    key: String,
    name: String,
}

/// What the source serves.
enum Serves {
    /// The image one reference names.
    One(Image),
    /// Every image of the registry, listed by the listing step.
    All(ListingStep),
}

pub struct RegistrySource {
    client: Arc<Registry>,
    spec: RegistrySpec,
    serves: Serves,
    uri: String,
    parallel: usize,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for RegistrySource {
    fn drop(&mut self) {
        // Never blocks, so it is allowed inside another runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The spec in one spelling: the same image configured twice is one source.
/// (Without `ca-file`: a host path never reaches a stored message.)
fn canonical(spec: &RegistrySpec, key: Option<&str>) -> String {
    let mut opts = Vec::new();
    if spec.plain_http {
        opts.push("plain-http".to_string());
    }
    if let Some(n) = &spec.name {
        opts.push(format!("name={n}"));
    }
    if let Some(p) = &spec.platform {
        opts.push(format!("platform={p}"));
    }
    let query = if opts.is_empty() {
        String::new()
    } else {
        format!("?{}", opts.join("&"))
    };
    match key {
        Some(key) => format!("registry://{}/{key}{query}", spec.host),
        None => format!("registry://{}{query}", spec.host),
    }
}

/// An image's key: its reference, and the platform asked for (another
/// platform is another image: its key, and so its fingerprint, says which).
fn image_key(repo: &str, target: &Target, platform: Option<&Platform>) -> (String, String) {
    let (reference, mut key) = match target {
        Target::Tag(t) => (t.clone(), format!("{repo}:{t}")),
        Target::Digest(d) => (d.clone(), format!("{repo}@{d}")),
    };
    if let Some(p) = platform {
        key.push_str(&format!(" for {p}"));
    }
    (reference, key)
}

impl RegistrySource {
    /// The source `spec_text` names; a whole registry's listing step is
    /// compiled or loaded from `cache_dir`.
    pub fn new(
        spec_text: &str,
        opts: &Options,
        cache_dir: &std::path::Path,
    ) -> Result<RegistrySource, SourceError> {
        let spec = crate::core::registry::parse(spec_text).map_err(SourceError::Config)?;
        let bad = |why: &str| {
            SourceError::Config(format!("registry source `{}`: {why}", printable(spec_text)))
        };
        let serves = match spec.image.clone() {
            Some((repo, target)) => {
                let name = match &spec.name {
                    Some(n) => n.clone(),
                    None => default_name(&repo, &target).ok_or_else(|| {
                        bad("the image name made from it would be too long: give name=")
                    })?,
                };
                let (reference, key) = image_key(&repo, &target, spec.platform.as_ref());
                Serves::One(Image {
                    repo,
                    reference,
                    key,
                    name,
                })
            }
            None => Serves::All(
                ListingStep::load(cache_dir)
                    .map_err(|e| bad(&format!("loading the listing step: {e}")))?,
            ),
        };
        let files = auth::auth_files(opts.auth_file.as_deref(), &|k| std::env::var(k).ok());
        let repo = match &serves {
            Serves::One(i) => i.repo.as_str(),
            Serves::All(_) => "",
        };
        let credential = auth::find(&files, &spec.host, repo).map_err(|e| bad(&e.to_string()))?;
        let client = Registry::new(&spec, credential).map_err(|e| bad(&e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tarpool-registry")
            .enable_all()
            .build()
            .map_err(|e| bad(&format!("starting the client: {e}")))?;
        Ok(RegistrySource {
            uri: canonical(
                &spec,
                match &serves {
                    Serves::One(i) => Some(&i.key),
                    Serves::All(_) => None,
                },
            ),
            client: Arc::new(client),
            spec,
            serves,
            parallel: opts.parallel.max(1),
            rt: Some(rt),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the registry runtime lives as long as the source")
    }

    /// The image's one object key, when the source is one image.
    pub fn key(&self) -> Option<&str> {
        match &self.serves {
            Serves::One(i) => Some(&i.key),
            Serves::All(_) => None,
        }
    }

    /// The platform the reference asks for (`platform=`), if any.
    pub fn platform(&self) -> Option<&Platform> {
        self.spec.platform.as_ref()
    }

    /// The image an object key names: the one image, or (a whole
    /// registry) any `REPO:TAG` of the grammar, with this source's
    /// platform.
    fn image(&self, key: &str) -> Result<Image, SourceError> {
        let not_found = || SourceError::NotFound(printable(key));
        match &self.serves {
            Serves::One(i) if i.key == key => Ok(i.clone()),
            Serves::One(_) => Err(not_found()),
            Serves::All(_) => {
                let reference = match &self.spec.platform {
                    Some(p) => key.strip_suffix(&format!(" for {p}")),
                    None => Some(key),
                };
                let (repo, tag) = reference
                    .and_then(|r| r.split_once(':'))
                    .filter(|(r, t)| valid_repo(r) && valid_tag(t))
                    .ok_or_else(not_found)?;
                let target = Target::Tag(tag.to_string());
                let name = default_name(repo, &target).ok_or_else(not_found)?;
                let (reference, key) = image_key(repo, &target, self.spec.platform.as_ref());
                Ok(Image {
                    repo: repo.to_string(),
                    reference,
                    key,
                    name,
                })
            }
        }
    }

    /// What every fetch of `image` goes through.
    fn inner(&self, image: &Image) -> Arc<Inner> {
        Arc::new(Inner {
            client: self.client.clone(),
            repo: image.repo.clone(),
            host: self.spec.host.clone(),
        })
    }

    /// `image` resolved now: its digest (the stamp) and size.
    fn head(&self, image: &Image) -> Result<Listed, RegistryError> {
        let fut = head(self.inner(image), image.reference.clone());
        let (digest, size) = run_on_handle(self.rt().handle(), fut)?;
        Ok(Listed {
            key: image.key.clone(),
            size,
            stamp: digest,
            modified: String::new(),
        })
    }

    /// `image` as a unit: resolved, or (refused) an image all the same,
    /// whose run fails with why.
    fn unit(image: &Image, head: Result<(String, u64), RegistryError>) -> Unit {
        let (stamp, size) = head.unwrap_or_else(|_| ("unresolved".into(), 0));
        Unit {
            name: image.name.clone(),
            kind: UnitKind::Registry,
            objects: vec![UnitObject {
                key: image.key.clone(),
                member: "manifest".into(),
                size,
                stamp,
                modified: String::new(),
            }],
        }
    }

    /// A whole registry's images, each resolved (`parallel` at a time).
    /// One that cannot be resolved now (the network, 429, 5xx) is left
    /// out of this discovery (its image is left as it is), unless none
    /// can: then the listing fails.
    fn discover_all(&self, step: &ListingStep, max: usize) -> Result<Discovery, SourceError> {
        let host = self.spec.host.as_str();
        let listed = catalog::list(self.rt().handle(), &self.client, host, step, max)?;
        let mut rejected = listed.rejected;
        let mut images = Vec::new();
        for (repo, tag) in listed.images {
            let key = image_key(&repo, &Target::Tag(tag), self.spec.platform.as_ref()).1;
            match self.image(&key) {
                Ok(i) => images.push(i),
                Err(_) => rejected.push(Rejected {
                    key: printable(&key),
                    reason: "the image name made from it would be too long".into(),
                }),
            }
        }
        // The default names are not one to one (`team/app:v1` and
        // `team_app:v1` are both `team_app_v1`): an image whose name
        // another one listed also has is served under neither, lest the
        // first listed take the other's name.
        let mut by_name: std::collections::HashMap<&str, usize> = Default::default();
        for i in &images {
            *by_name.entry(i.name.as_str()).or_default() += 1;
        }
        let shared: Vec<String> = by_name
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(name, _)| name.to_string())
            .collect();
        images.retain(|i| {
            let clash = shared.contains(&i.name);
            if clash {
                rejected.push(Rejected {
                    key: printable(&i.key),
                    reason: format!(
                        "another repository and tag of the registry make the same image name `{}`: neither is served (give each a source of its own with name=)",
                        i.name
                    ),
                });
            }
            !clash
        });
        let inners: Vec<(Arc<Inner>, String)> = images
            .iter()
            .map(|i| (self.inner(i), i.reference.clone()))
            .collect();
        let parallel = self.parallel;
        let heads = run_on(self.rt().handle(), async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(parallel));
            let mut set = tokio::task::JoinSet::new();
            for (i, (inner, reference)) in inners.into_iter().enumerate() {
                let slots = slots.clone();
                set.spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    (i, head(inner, reference).await)
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.extend(r.ok());
            }
            out.sort_by_key(|(i, _)| *i);
            out
        })?;
        let mut units = Vec::new();
        let mut first_err = None;
        for (i, h) in heads {
            match h {
                Err(e) if e.retryable() => {
                    tracing::warn!(image = %images[i].key, error = %e, "cannot be resolved now; left as it is");
                    first_err.get_or_insert(e);
                }
                h => units.push(Self::unit(&images[i], h)),
            }
        }
        if let (true, Some(e)) = (units.is_empty(), first_err) {
            return Err(self.err(e));
        }
        Ok(Discovery { units, rejected })
    }

    /// Fetches the blobs `wanted` (each by digest, of its size) into
    /// `blobs`, `parallel` at a time; a blob already stored is not fetched.
    /// Returns each blob's outcome, in order.
    pub fn fetch_blobs(
        &self,
        key: &str,
        wanted: &[(String, u64)],
        blobs: &BlobStore,
    ) -> Vec<Result<fetch::Fetched, SourceError>> {
        let inner = match self.image(key) {
            Ok(i) => self.inner(&i),
            Err(e) => {
                return wanted
                    .iter()
                    .map(|_| Err(SourceError::Io(e.to_string())))
                    .collect()
            }
        };
        let blobs2 = blobs.clone();
        let wants: Vec<Want> = wanted
            .iter()
            .map(|(d, size)| Want::blob(d, *size))
            .collect();
        let parallel = self.parallel;
        let n = wants.len();
        match run_on(self.rt().handle(), async move {
            fetch::many(inner, blobs2, wants, parallel).await
        }) {
            Ok(r) => r,
            Err(e) => (0..n)
                .map(|_| Err(SourceError::Io(e.to_string())))
                .collect(),
        }
    }

    /// The manifest step's reader of this image: `manifest` is the stored
    /// manifest blob `manifest`; `manifests/sha256/<hex>` and
    /// `blobs/sha256/<hex>` are fetched (at most `cap` bytes, checked
    /// against the digest), stored and read; nothing else is there. A
    /// failure that is not the image's (the network, 429, 5xx) is also
    /// put in the returned slot, so the transition retries rather than
    /// blaming the image.
    pub fn member_reader(
        &self,
        key: &str,
        blobs: &BlobStore,
        manifest: &str,
        cap: usize,
    ) -> Result<(MemberReader, FailedSlot), SourceError> {
        let slot = Arc::new(Mutex::new(None));
        let (inner, blobs) = (self.inner(&self.image(key)?), blobs.clone());
        let (manifest, handle) = (manifest.to_string(), self.rt().handle().clone());
        let failed = slot.clone();
        // A failure that is not the image's: kept for the transition.
        let environment = move |msg: &str| {
            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(SourceError::Io(msg.into()));
        };
        let read = move |name: &str| -> Result<Vec<u8>, String> {
            let (digest, want) = if name == "manifest" {
                (manifest.clone(), None)
            } else if let Some(hex) = name.strip_prefix("manifests/sha256/") {
                let d = format!("sha256:{hex}");
                (d.clone(), Some(Want::manifest(&d, cap)))
            } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                let d = format!("sha256:{hex}");
                (d.clone(), Some(Want::capped(&d, cap)))
            } else {
                return Err(format!("no member `{}`", printable(name)));
            };
            if !crate::core::chain::is_sha256_digest(&digest) {
                return Err(format!("`{}` is not a sha256 digest", printable(name)));
            }
            if let Some(want) = want {
                let (inner, blobs) = (inner.clone(), blobs.clone());
                let r = run_on(
                    &handle,
                    async move { fetch::one(&inner, &blobs, &want).await },
                )
                .and_then(|r| r);
                if let Err(e) = r {
                    let msg = e.to_string();
                    if matches!(e, SourceError::Io(_)) {
                        environment(&msg);
                    }
                    return Err(msg);
                }
            }
            let mut bytes = Vec::new();
            let read = blobs
                .open(&digest)
                .and_then(|f| f.take(cap as u64 + 1).read_to_end(&mut bytes));
            if let Err(e) = read {
                // The host's trouble, not the image's.
                let msg = format!("reading a stored blob: {e}");
                environment(&msg);
                return Err(msg);
            }
            Ok(bytes)
        };
        Ok((Box::new(read), slot))
    }

    /// A refusal as the image's failure (its fault, or the registry's
    /// refusal to serve it) or as the environment's (retried).
    fn err(&self, e: RegistryError) -> SourceError {
        fetch::source_error(&self.spec.host, e)
    }
}

/// `reference` of `inner`'s repository resolved: its digest and size.
async fn head(inner: Arc<Inner>, reference: String) -> Result<(String, u64), RegistryError> {
    let head = fetch::retrying(|| inner.client.manifest_head(&inner.repo, &reference)).await?;
    match (head.digest, head.size) {
        (Some(d), Some(s)) => Ok((d, s)),
        // No digest or no length in the answer: the manifest itself says
        // them.
        (digest, _) => {
            let by = digest.unwrap_or(reference);
            let m =
                fetch::retrying(|| inner.client.manifest(&inner.repo, &by, MAX_MANIFEST)).await?;
            Ok((m.digest, m.bytes.len() as u64))
        }
    }
}

/// Runs the requests `f` on the source's runtime ([`run_on`]) and waits for
/// their answer on this thread.
fn run_on_handle<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    f: impl std::future::Future<Output = Result<T, RegistryError>> + Send + 'static,
) -> Result<T, RegistryError> {
    run_on(handle, f).unwrap_or_else(|e| {
        Err(RegistryError::Transport(
            "the registry client".into(),
            e.to_string(),
        ))
    })
}

impl Source for RegistrySource {
    fn uri(&self) -> String {
        self.uri.clone()
    }

    /// The one image, as [`Source::discover`] makes it.
    fn list(&self) -> Result<Listing, SourceError> {
        let d = self.discover(usize::MAX)?;
        Ok(Listing {
            objects: d
                .units
                .into_iter()
                .flat_map(|u| u.objects)
                .map(|o| Listed {
                    key: o.key,
                    size: o.size,
                    stamp: o.stamp,
                    modified: o.modified,
                })
                .collect(),
            rejected: Vec::new(),
        })
    }

    fn discover(&self, max_images: usize) -> Result<Discovery, SourceError> {
        let image = match &self.serves {
            Serves::One(i) => i,
            Serves::All(step) => return self.discover_all(step, max_images),
        };
        let fut = head(self.inner(image), image.reference.clone());
        let h = match run_on_handle(self.rt().handle(), fut) {
            Err(e) if e.retryable() => return Err(self.err(e)),
            h => h,
        };
        Ok(Discovery {
            units: vec![Self::unit(image, h)],
            rejected: Vec::new(),
        })
    }

    fn stat(&self, key: &str) -> Result<Listed, SourceError> {
        let image = self.image(key)?;
        self.head(&image).map_err(|e| self.err(e))
    }

    fn open(&self, key: &str) -> Result<(Box<dyn Read + Send>, Listed), SourceError> {
        let l = self.stat(key)?;
        let inner = self.inner(&self.image(key)?);
        let digest = l.stamp.clone();
        let m = run_on_handle(self.rt().handle(), async move {
            fetch::retrying(|| inner.client.manifest(&inner.repo, &digest, MAX_MANIFEST)).await
        })
        .map_err(|e| self.err(e))?;
        Ok((Box::new(std::io::Cursor::new(m.bytes)), l))
    }

    /// The manifest by the digest it was listed with.
    fn fetch(&self, obj: &UnitObject, blobs: &BlobStore) -> Result<(String, u64), SourceError> {
        if !crate::core::chain::is_sha256_digest(&obj.stamp) {
            // Discovery could not resolve the reference: say why now.
            self.stat(&obj.key)?;
            return Err(SourceError::Changed(format!(
                "`{}` was resolved since it was listed",
                printable(&obj.key)
            )));
        }
        let want = Want::manifest(&obj.stamp, MAX_MANIFEST);
        let inner = self.inner(&self.image(&obj.key)?);
        let blobs2 = blobs.clone();
        let got = run_on(self.rt().handle(), async move {
            fetch::one(&inner, &blobs2, &want).await
        })??;
        if got.size != obj.size {
            return Err(SourceError::BadObject(format!(
                "registry {}: manifest {} is {} bytes, listed as {}",
                printable(&self.spec.host),
                obj.stamp,
                got.size,
                obj.size
            )));
        }
        Ok((obj.stamp.clone(), got.size))
    }

    fn registry(&self) -> Option<&RegistrySource> {
        Some(self)
    }
}
