//! The worker's confinement, in order: no_new_privs, a Landlock ruleset
//! (read the blob and the tar check, write beneath the layer root), the
//! capabilities dropped to what extraction needs, the seccomp allowlist.

use rustix::fd::BorrowedFd;

use super::{seccomp, Request};
use crate::core::policy::{Action, Policy};

/// no_new_privs, Landlock, capabilities, seccomp (see the module docs). Returns a
/// one-line description of what is in force.
/// `root` is the layer root ([`Task::Apply`](super::Task::Apply)); without
/// one ([`Task::Hash`](super::Task::Hash)) the worker may read the blob and
/// nothing else, and keeps no capability.
pub(super) fn confine(req: &Request, root: Option<BorrowedFd<'_>>) -> Result<String, String> {
    use landlock::{
        Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, ABI,
    };
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("worker: no_new_privs: {e}"))?;

    const ABIS: [ABI; 5] = [ABI::V1, ABI::V2, ABI::V3, ABI::V4, ABI::V5];
    let number = |abi: ABI| ABIS.iter().take_while(|&&v| v <= abi).count();
    #[allow(unused_mut)]
    let mut abi = ABI::V5;
    #[cfg(debug_assertions)]
    if let Some(n) = req.test_landlock_abi {
        abi = ABIS[usize::from(n.clamp(1, 5)) - 1];
    }
    let blob = PathFd::new(&req.blob).map_err(|e| format!("worker: {e}"))?;
    let cache = match root {
        Some(_) => Some(PathFd::new(&req.tar_cache).map_err(|e| format!("worker: {e}"))?),
        None => None,
    };
    let landlock = (|| -> Result<landlock::RestrictionStatus, landlock::RulesetError> {
        let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(abi))?;
        // TCP is Landlock's from ABI 4 (seccomp denies sockets anyway);
        // an empty set is an error.
        if abi >= ABI::V4 {
            ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
        }
        let mut rules = ruleset
            .create()?
            .add_rule(PathBeneath::new(blob, AccessFs::ReadFile))?;
        if let (Some(root), Some(cache)) = (root, cache) {
            rules = rules
                .add_rule(PathBeneath::new(root, AccessFs::from_all(abi)))?
                .add_rule(PathBeneath::new(cache, AccessFs::ReadFile))?;
        }
        rules.restrict_self()
    })();
    // The ABI in force: the one requested, or the kernel's if older.
    let landlock = landlock.map(|status| {
        let kernel = match status.landlock {
            landlock::LandlockStatus::Available { effective_abi, .. } => effective_abi,
            _ => ABI::Unsupported,
        };
        (status.ruleset, number(abi.min(kernel)))
    });
    #[cfg(debug_assertions)]
    let landlock = if req.test_no_landlock {
        Ok((RulesetStatus::NotEnforced, 0))
    } else {
        landlock
    };
    const OPT_OUT: &str = "set unconfined_worker = true to override";
    // Landlock at any ABI bounds writes to the layer root; seccomp (below)
    // denies what an older ABI leaves open. Without Landlock at all the
    // guarantee cannot be had.
    let landlock = match landlock {
        Ok((RulesetStatus::FullyEnforced, n)) => format!("landlock fully enforced (ABI {n})"),
        Ok((RulesetStatus::PartiallyEnforced, n)) => {
            format!("landlock partially enforced (ABI {n})")
        }
        Ok((other, _)) if req.unconfined => format!("landlock {other:?} (operator opt-out)"),
        Ok((other, _)) => {
            return Err(format!(
                "worker: Landlock is not enforced on this kernel ({other:?}): writes could not be kept beneath the layer root; refusing to extract unconfined ({OPT_OUT})"
            ))
        }
        Err(e) if req.unconfined => format!("landlock unavailable: {e} (operator opt-out)"),
        Err(e) => {
            return Err(format!(
                "worker: cannot apply Landlock ({e}): writes could not be kept beneath the layer root; refusing to extract unconfined ({OPT_OUT})"
            ))
        }
    };

    let keep = match root {
        Some(_) => kept_capabilities(&req.policy),
        None => Vec::new(),
    };
    let caps = drop_capabilities(&keep);
    let caps = match caps {
        Ok(bounding) => format!(
            "capabilities {}{}",
            if keep.is_empty() {
                "none".to_string()
            } else {
                keep.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            if bounding {
                ""
            } else {
                " (bounding set kept: no CAP_SETPCAP; no_new_privs stops any regain)"
            }
        ),
        Err(e) if req.unconfined => format!("capabilities not dropped: {e} (operator opt-out)"),
        Err(e) => return Err(format!("worker: dropping capabilities: {e}")),
    };
    // Last, so none of the calls above need allowing; before the first
    // byte of the layer is read.
    let seccomp = match seccomp::install() {
        Ok(s) => s,
        Err(e) if req.unconfined => format!("seccomp not installed: {e} (operator opt-out)"),
        Err(e) => {
            return Err(format!(
                "worker: cannot install the seccomp filter ({e}): sockets, truncate and ioctl could not be denied where Landlock does not cover them; refusing to extract unconfined ({OPT_OUT})"
            ))
        }
    };
    Ok(format!("no_new_privs, {landlock}, {caps}, {seccomp}"))
}

/// The capabilities extraction needs under `policy`.
pub fn kept_capabilities(policy: &Policy) -> Vec<caps::Capability> {
    use caps::Capability as C;
    // FSETID: chmod keeps a setgid bit on a file whose group is not ours.
    let mut keep = vec![
        C::CAP_CHOWN,
        C::CAP_FOWNER,
        C::CAP_DAC_OVERRIDE,
        C::CAP_FSETID,
    ];
    if policy.device_nodes.action == Action::Allow {
        keep.push(C::CAP_MKNOD);
    }
    if policy
        .xattrs
        .allow
        .iter()
        .any(|x| x == "security.capability" || x == "security.")
    {
        keep.push(C::CAP_SETFCAP);
    }
    keep
}

/// Drops every capability not in `keep`. Returns whether the bounding set
/// could be cut too (that needs CAP_SETPCAP; without it the bounding set
/// stays, which no_new_privs makes moot: nothing can gain capabilities
/// beyond the permitted set, and the worker never executes anything).
fn drop_capabilities(keep: &[caps::Capability]) -> Result<bool, caps::errors::CapsError> {
    use caps::{CapSet, CapsHashSet};
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // effective set below no longer has.
    let can_bound = caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)?;
    if can_bound {
        for c in caps::all() {
            if !keep.contains(&c) && caps::has_cap(None, CapSet::Bounding, c)? {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(can_bound)
}
