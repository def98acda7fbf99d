//! The command line: parsing (`args`), the checked configuration
//! (`config`), and the commands, dispatched here (`service`, `output`,
//! `activation`, `maintenance`).

mod activation;
mod args;
mod config;
mod maintenance;
mod output;
mod service;
mod steps;
mod steps_try;
#[cfg(test)]
mod tests;

use activation::*;
pub use args::*;
use config::*;
use maintenance::*;
use output::*;
use service::*;
use steps::*;
use steps_try::*;

use crate::statedir::StateDir;
use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::machine::RetryPolicy;
use crate::core::names::valid_image_name;
use crate::core::policy::Policy;
use crate::ctx::Ctx;
use crate::engine;
use crate::store::{ActivationRow, Store};

/// The example bucket in this repository: the default source.
pub const EXAMPLE_BUCKET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/example-bucket");

pub fn main() -> Result<u8> {
    use std::io::IsTerminal as _;
    // Before anything is created: nothing tarpool makes is readable by
    // other users (see statedir).
    crate::statedir::set_private_umask();
    let args = Args::parse();
    // The file's log format counts too; a broken file is reported below by
    // the command that reads it.
    let format = args
        .log_format
        .or_else(|| load_file(&args).ok().and_then(|f| f.log_format))
        .unwrap_or(crate::logging::LogFormat::Human);
    let bars = match &args.cmd {
        Cmd::Run {
            no_progress, json, ..
        } if !no_progress
            && !json
            && format == crate::logging::LogFormat::Human
            && std::io::stderr().is_terminal() =>
        {
            let b = Arc::new(crate::progress::Bars::new());
            crate::progress::install(b.clone());
            Some(b.multi())
        }
        _ => None,
    };
    crate::logging::init(format, bars);
    let none = Overrides::default();
    match &args.cmd {
        Cmd::Run {
            once,
            source,
            backend,
            jobs,
            interval,
            no_progress: _,
            metrics_addr,
            json,
        } => {
            let o = Overrides {
                sources: source,
                backend: *backend,
                jobs: *jobs,
                interval: *interval,
                metrics_addr: metrics_addr.as_deref(),
            };
            run(&args, &o, *once, *json)
        }
        Cmd::Config {
            cmd:
                ConfigCmd::Show {
                    source,
                    backend,
                    jobs,
                    json,
                },
        } => {
            let o = Overrides {
                sources: source,
                backend: *backend,
                jobs: *jobs,
                ..Overrides::default()
            };
            let cfg = config(&args, &o)?;
            let file = cfg.as_file();
            if *json {
                println!("{}", serde_json::to_string_pretty(&file)?);
            } else {
                println!(
                    "# tarpool's effective configuration (policy `{}`, sha256:{})",
                    cfg.policy.name,
                    crate::core::policy::policy_hash(&toml::to_string(&cfg.policy)?)
                );
                print!("{}", toml::to_string(&file)?);
            }
            Ok(0)
        }
        Cmd::Status { json } => {
            let cfg = config(&args, &none)?;
            status(&open_store(&cfg.state_dir)?, *json)
        }
        Cmd::Audit { name, json } => {
            let cfg = config(&args, &none)?;
            audit(&open_store(&cfg.state_dir)?, name, *json)
        }
        Cmd::Activate {
            name,
            as_,
            mount,
            suid,
            backend,
        } => {
            let cfg = config(&args, &Overrides::backend(*backend))?;
            let suid = if *suid {
                crate::sys::Suid::Honoured
            } else {
                crate::sys::Suid::Ignored
            };
            activate(&cfg, name, as_.as_deref(), mount.as_deref(), suid)
        }
        Cmd::Deactivate { act, backend } => {
            let cfg = config(&args, &Overrides::backend(*backend))?;
            deactivate(&cfg, act)
        }
        Cmd::Exec {
            act,
            backend: b,
            run,
            cmd,
        } => {
            let cfg = config(&args, &Overrides::backend(*b))?;
            let opts = run.options()?;
            let store = open_store(&cfg.state_dir)?;
            crate::container::exec(
                &cfg.state_dir,
                &store,
                &|| backend(&cfg),
                &cfg.container,
                act,
                cmd,
                &opts,
            )
        }
        Cmd::Bundle { act, dir, run, cmd } => {
            let cfg = config(&args, &Overrides::default())?;
            let opts = run.options()?;
            let store = open_store(&cfg.state_dir)?;
            let made = crate::container::bundle(
                &cfg.state_dir,
                &store,
                &cfg.container,
                act,
                dir,
                cmd,
                &opts,
            )?;
            println!("{made}");
            Ok(0)
        }
        Cmd::Pool { cmd } => {
            let cfg = config(
                &args,
                &Overrides {
                    backend: Some(crate::core::states::Backend::Thinpool),
                    ..Overrides::default()
                },
            )?;
            match cmd {
                PoolCmd::Init {
                    data_size,
                    meta_size,
                    block_size,
                } => pool_init(
                    &cfg,
                    data_size.as_deref(),
                    meta_size.as_deref(),
                    block_size.as_deref(),
                ),
                PoolCmd::Status { json } => pool_status(&cfg, *json),
            }
        }
        Cmd::Gc { backend, json } => {
            let cfg = config(&args, &Overrides::backend(*backend))?;
            gc(&cfg, *json)
        }
        Cmd::Recover { wipe, json } => {
            let cfg = config(&args, &none)?;
            recover(&cfg, *wipe, *json)
        }
        Cmd::Steps {
            cmd: StepsCmd::List { json },
        } => steps_list(&config(&args, &none)?, *json),
        Cmd::Steps {
            cmd: StepsCmd::Check { file, json },
        } => {
            // The chains it would join: the configuration's, or the
            // default ones when there is none to read (said).
            let steps = config(&args, &none).map(|c| c.steps).unwrap_or_else(|e| {
                eprintln!("tarpool: the configuration cannot be read ({e:#}); the pin below joins the default chains");
                Default::default()
            });
            steps_check(&steps, file, *json)
        }
        Cmd::Steps {
            cmd: StepsCmd::Try { file, image, json },
        } => {
            let (steps, policy) = match config(&args, &none) {
                Ok(c) => (c.steps, c.policy),
                Err(e) => {
                    eprintln!("tarpool: the configuration cannot be read ({e:#}); trying with the default steps and policy");
                    (Default::default(), Policy::default_policy())
                }
            };
            steps_try(&steps, &policy, file, image, *json)
        }
        Cmd::Cancel { name } => {
            let cfg = config(&args, &none)?;
            let store = open_store(&cfg.state_dir)?;
            if store.request_cancel(name)? {
                println!("cancellation requested for {name}");
                Ok(0)
            } else {
                bail!("image {name} has no active run")
            }
        }
    }
}

fn backend(cfg: &Config) -> Result<Box<dyn crate::backend::Snapshotter>> {
    crate::backend::open(
        cfg.backend,
        &cfg.state_dir,
        Arc::new(crate::sys::LinuxMounts),
        &cfg.thinpool,
    )
    .map_err(anyhow::Error::msg)
}
