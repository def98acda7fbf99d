//! What the commands print: the run report, `status`, `audit`.

use super::*;

pub(super) fn report(
    ctx: &Ctx,
    names: &[String],
    summary: &engine::Summary,
    json: bool,
) -> Result<u8> {
    let images = ctx.store.images()?;
    let mut all_ready = true;
    let mut rows = Vec::new();
    for n in names {
        let img = images.iter().find(|i| &i.name == n);
        let state = img.map(|i| i.state.as_str()).unwrap_or("pending");
        let state = if state == "cancelled" {
            "failed"
        } else {
            state
        };
        all_ready &= state == "ready";
        rows.push(json!({
            "name": n,
            "state": state,
            "error": img.and_then(|i| i.error.clone()),
            "unchanged": summary.unchanged.contains(n),
        }));
    }
    if json {
        println!(
            "{}",
            json!({
                "images": rows,
                "rejected": summary.rejected.iter().map(|(k, r)| json!({"key": k, "reason": r})).collect::<Vec<_>>(),
                "unlisted": summary.unlisted.iter().map(|(s, e)| json!({"source": s, "error": e})).collect::<Vec<_>>(),
            })
        );
    } else {
        for r in &rows {
            let err = r["error"]
                .as_str()
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            let note = if r["unchanged"] == true {
                " (unchanged)"
            } else {
                ""
            };
            println!(
                "{:<24} {}{}{}",
                r["name"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                note,
                err
            );
        }
        for (source, e) in &summary.unlisted {
            println!("source {source} could not be listed: {e}");
        }
        println!(
            "{} ready, {} failed, {} not images",
            rows.iter().filter(|r| r["state"] == "ready").count(),
            rows.iter().filter(|r| r["state"] == "failed").count(),
            summary.rejected.len()
        );
    }
    Ok(if all_ready && summary.unlisted.is_empty() {
        0
    } else {
        1
    })
}

pub(super) fn status(store: &Store, json: bool) -> Result<u8> {
    store.snapshot(|| status_inner(store, json))
}

pub(super) fn status_inner(store: &Store, json: bool) -> Result<u8> {
    let images = store.images()?;
    let active = store.active_runs()?;
    let mut names: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
    for r in &active {
        if !names.contains(&r.image) {
            names.push(r.image.clone());
        }
    }
    names.sort();
    let mut rows = Vec::new();
    for n in &names {
        let img = images.iter().find(|i| &i.name == n);
        let run = active.iter().find(|r| &r.image == n);
        let (state, error) = match (run, img) {
            (Some(r), _) => {
                let started = !store.transitions_for(n)?.iter().all(|t| t.run != r.id);
                (if started { "running" } else { "pending" }, None)
            }
            (None, Some(i)) if i.state == crate::core::states::ImageState::Cancelled => {
                ("failed", i.error.clone())
            }
            (None, Some(i)) => (i.state.as_str(), i.error.clone()),
            (None, None) => ("pending", None),
        };
        rows.push(json!({
            "name": n,
            "state": state,
            "error": error,
            // Why it failed: input (settled until the image changes),
            // environment or resource (tried again at the next poll).
            "failure_kind": if state == "failed" {
                img.and_then(|i| i.failure_kind)
            } else {
                None
            },
            "run": run.map(|r| r.id.clone()).or_else(|| img.and_then(|i| i.last_run.clone())),
            "step": run.and_then(|r| r.next_step.clone()),
            "format": img.and_then(|i| i.format.clone()),
            "top_chain": img.and_then(|i| i.top_chain.clone()),
            "layers": img.and_then(|i| i.layers.clone()),
            "config": img.and_then(|i| i.config.clone()),
            "updated_at": img.map(|i| i.updated_at),
        }));
    }
    let rejected: Vec<_> = store
        .rejected()?
        .into_iter()
        .map(|(s, k, r)| json!({"source": s, "key": k, "reason": r}))
        .collect();
    if json {
        println!("{}", json!({ "images": rows, "rejected": rejected }));
    } else {
        if rows.is_empty() {
            println!("no images tracked");
        }
        for r in &rows {
            let err = r["error"]
                .as_str()
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            println!(
                "{:<24} {}{}",
                r["name"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                err
            );
        }
        for r in &rejected {
            println!(
                "not an image: {}: {}",
                r["key"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}

pub(super) fn audit(store: &Store, name: &str, json: bool) -> Result<u8> {
    let transitions = store.transitions_for(name)?;
    let decisions = store.decisions_for(name)?;
    if transitions.is_empty() && !store.has_image_history(name)? {
        bail!("no image named {name} has been processed");
    }
    let mut runs: Vec<&str> = transitions.iter().map(|t| t.run.as_str()).collect();
    runs.dedup();
    let mut policies = Vec::new();
    for r in runs {
        if let Some((sha, pname)) = store.run_policy(r)? {
            policies.push(json!({ "run": r, "policy": pname, "policy_sha256": sha }));
        }
    }
    if json {
        println!(
            "{}",
            json!({ "image": name, "runs": policies, "transitions": transitions, "decisions": decisions })
        );
    } else {
        for p in &policies {
            println!(
                "run {} policy {} sha256:{}",
                p["run"].as_str().unwrap_or(""),
                p["policy"].as_str().unwrap_or(""),
                p["policy_sha256"].as_str().unwrap_or("")
            );
        }
        for t in &transitions {
            let err = t
                .error
                .as_deref()
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            println!(
                "{} {} {:<20} #{} {}{}",
                t.run, t.version, t.name, t.attempt, t.outcome, err
            );
        }
        for d in &decisions {
            let at = match (d.layer, &d.path) {
                (Some(l), Some(p)) => format!(" layer {l} `{p}`:"),
                (Some(l), None) => format!(" layer {l}:"),
                (None, Some(p)) => format!(" `{p}`:"),
                (None, None) => String::new(),
            };
            let action = if d.action.is_empty() {
                &d.verdict
            } else {
                &d.action
            };
            println!(
                "decision {} {:<18} {:<6}{at} {} (why: {})",
                d.version, d.rule, action, d.detail, d.reason
            );
        }
    }
    Ok(0)
}
