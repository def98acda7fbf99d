//! `tarpool activate` and `tarpool deactivate`.

use super::*;

pub(super) fn activate(
    cfg: &Config,
    name: &str,
    as_: Option<&str>,
    mount: Option<&Path>,
    suid: crate::sys::Suid,
) -> Result<u8> {
    if !valid_image_name(name) {
        bail!("invalid image name {name:?}");
    }
    let store = open_store(&cfg.state_dir)?;
    let img = store
        .image(name)?
        .with_context(|| format!("no image named {name}"))?;
    if img.state != crate::core::states::ImageState::Ready {
        bail!("image {name} is {}, not ready", img.state);
    }
    let act = as_
        .map(str::to_string)
        .unwrap_or_else(|| ulid::Ulid::new().to_string());
    if !crate::core::names::valid_activation_name(&act) {
        bail!("invalid activation name {act:?} (allowed: [A-Za-z0-9_-][A-Za-z0-9._-]{{0,63}})");
    }
    if store.activation(&act)?.is_some() {
        bail!("activation {act} already exists");
    }
    let chains: Vec<String> = img
        .layers
        .as_ref()
        .and_then(|l| l.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["chain_id"].as_str().map(str::to_string))
        .collect();
    let mut ids = Vec::new();
    for c in chains.iter().rev() {
        match store.layer(c)? {
            Some(l) if l.committed => ids.push(l.id),
            _ => bail!("image {name}: layer {c} is missing; run `tarpool run` again"),
        }
    }
    let mountpoint = match mount {
        Some(m) => {
            std::fs::create_dir_all(m)
                .with_context(|| format!("creating mount point {}", m.display()))?;
            Some(std::fs::canonicalize(m)?)
        }
        None => None,
    };
    let b = backend(cfg)?;
    // Recorded first: a cleanup running meanwhile (gc, a run starting) keeps
    // what the store knows.
    store.add_activation(&ActivationRow {
        id: act.clone(),
        image: name.to_string(),
        top_chain: img.top_chain.clone().unwrap_or_default(),
        mountpoint: mountpoint.as_ref().map(|p| p.display().to_string()),
    })?;
    let started = std::time::Instant::now();
    if suid == crate::sys::Suid::Honoured {
        tracing::warn!(
            activation = %act,
            "--suid: the image's setuid files take effect on the host at the mount point"
        );
    }
    let info = match b.activate(&act, &ids, mountpoint.as_deref(), suid) {
        Ok(i) => i,
        Err(e) => {
            store.remove_activation(&act)?;
            return Err(anyhow::Error::new(e).context(format!("activating {name}")));
        }
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        json!({
            "activation": act,
            "image": name,
            "backend": b.kind(),
            "top_chain": img.top_chain,
            "mountpoint": info.mountpoint,
            "mount": { "type": info.fstype, "options": info.options },
            "device": info.device,
            "elapsed_ms": elapsed_ms,
        })
    );
    Ok(0)
}

pub(super) fn deactivate(cfg: &Config, act: &str) -> Result<u8> {
    let store = open_store(&cfg.state_dir)?;
    let exists = || -> Result<ActivationRow> {
        store
            .activation(act)?
            .with_context(|| format!("no activation named {act}"))
    };
    exists()?;
    // Never while a `tarpool exec` runs in it: "activation ACT is in use".
    let lock = crate::container::lock_activation(&cfg.state_dir, act, true)?;
    // Again under the lock: another deactivate may have just removed it.
    let row = exists()?;
    crate::container::release(&cfg.state_dir, &store, &cfg.container, act)
        .with_context(|| format!("deactivating {act}"))?;
    let b = backend(cfg)?;
    b.deactivate(act, row.mountpoint.as_deref().map(Path::new))
        .with_context(|| format!("deactivating {act}"))?;
    store.remove_activation(act)?;
    if let Err(e) = lock.remove() {
        tracing::warn!("removing the lock file of activation {act}: {e}");
    }
    println!("{}", json!({ "deactivated": act }));
    Ok(0)
}
