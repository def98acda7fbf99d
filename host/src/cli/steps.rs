//! `tarpool steps`: the configured step chains (`list`), and whether this
//! host would load a component, with the line that pins it (`check`).

use super::*;
use crate::wasm::{ComponentSpec, StepsConfig};

/// `tarpool steps list`: every configured component, in the order asked.
pub(super) fn steps_list(cfg: &Config, json: bool) -> Result<u8> {
    let steps = crate::wasm::Steps::load_with(&cfg.state_dir.cache(), &cfg.steps)
        .context("loading the format steps")?;
    let chains = steps.chains();
    if json {
        println!(
            "{}",
            json!({
                "wit_package": crate::wasm::describe::WIT_PACKAGE,
                "wit_version": crate::wasm::describe::WIT_VERSION,
                "components": chains,
            })
        );
        return Ok(0);
    }
    println!(
        "host: {}@{}",
        crate::wasm::describe::WIT_PACKAGE,
        crate::wasm::describe::WIT_VERSION
    );
    for c in chains {
        println!(
            "{:<10} {:<16} {:<8} {}@{}  sha256:{}  {}",
            c.step,
            c.world,
            c.origin,
            crate::wasm::describe::WIT_PACKAGE,
            c.wit_version,
            c.sha256,
            c.component
        );
    }
    Ok(0)
}

/// The `[steps]` line with `file` (pinned by `sha256`) added to the chain
/// of `step`: after the configured components of a chain, in place of the
/// tar check.
fn pinned(steps: &StepsConfig, step: &str, file: &Path, sha256: &str) -> Result<String> {
    let spec = ComponentSpec::File {
        path: file.to_path_buf(),
        sha256: sha256.to_string(),
    };
    let value = match step {
        "classify" => {
            let mut v = steps.classify.clone();
            v.push(spec);
            toml::Value::try_from(v)?
        }
        "manifest" => {
            let mut v = steps.manifest.clone();
            v.push(spec);
            toml::Value::try_from(v)?
        }
        "inspect" => {
            let mut v = steps.inspect.clone();
            v.push(spec);
            toml::Value::try_from(v)?
        }
        _ => toml::Value::try_from(spec)?,
    };
    Ok(format!("[steps]\n{step} = {value}"))
}

/// `tarpool steps check FILE`: what the component is, whether this host
/// loads it and why not, and the `[steps]` line that pins it. Exit 1 when
/// it is refused.
pub(super) fn steps_check(steps: &StepsConfig, file: &Path, json: bool) -> Result<u8> {
    let abs = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let size = std::fs::metadata(&abs)?.len();
    let wasm = if size > crate::wasm::describe::MAX_COMPONENT_BYTES as u64 {
        Vec::new()
    } else {
        std::fs::read(&abs).with_context(|| format!("reading {}", abs.display()))?
    };
    let checked = if wasm.is_empty() && size > 0 {
        Err(format!(
            "{size} bytes: a component is at most {} bytes",
            crate::wasm::describe::MAX_COMPONENT_BYTES
        ))
    } else {
        crate::wasm::check_component(&wasm)
    };
    let host = format!(
        "{}@{}",
        crate::wasm::describe::WIT_PACKAGE,
        crate::wasm::describe::WIT_VERSION
    );
    match checked {
        Err(why) => {
            if json {
                println!(
                    "{}",
                    json!({"component": abs, "size": size, "host": host, "accepted": false, "refused": why})
                );
            } else {
                println!(
                    "component: {}\nsize: {size} bytes\nhost: {host}\nrefused: {why}",
                    abs.display()
                );
            }
            Ok(1)
        }
        Ok(c) => {
            let d = &c.description;
            let step = d.world.config_key().unwrap_or_default();
            let pin = pinned(steps, step, &abs, &c.sha256)?;
            if json {
                println!(
                    "{}",
                    json!({
                        "component": abs,
                        "size": c.size,
                        "sha256": c.sha256,
                        "world": d.world.name(),
                        "wit_version": d.wit_version,
                        "host": host,
                        "accepted": true,
                        "imports": d.imports,
                        "exports": d.exports,
                        "compile_ms": c.compile.as_millis(),
                        "pin": pin,
                    })
                );
            } else {
                println!("component: {}", abs.display());
                println!("size: {} bytes, sha256:{}", c.size, c.sha256);
                println!(
                    "world: {} (built against {}@{}; host: {host}): accepted",
                    d.world.name(),
                    crate::wasm::describe::WIT_PACKAGE,
                    d.wit_version
                );
                println!("imports: {}", d.imports.join(", "));
                println!("exports: {}", d.exports.join(", "));
                println!("compiled in {} ms", c.compile.as_millis());
                println!("pin it in the configuration:\n{pin}");
            }
            Ok(0)
        }
    }
}
