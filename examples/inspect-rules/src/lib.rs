//! An example inspect step: three rules of an operator's own, as a
//! component of tarpool's `inspect-step` world (`wit/tarpool.wit`).
//!
//! - `no-root-user` (deny): an image whose configuration runs its command
//!   as root (no `User`, `root` or uid 0). Images without a configuration
//!   (a bare layer, a rootfs archive) are not judged by it.
//! - `setuid-outside-bin` (deny): a setuid or setgid file anywhere but
//!   directly in `/bin`, `/sbin`, `/usr/bin` or `/usr/sbin` (Debian's
//!   `unix_chkpwd` is setgid in `/usr/sbin`).
//! - `no-editor-backups` (skip): files named `*~` or `.*.swp` are not
//!   written.
//!
//! The rules are plain functions ([`check_image`], [`check_entry`]) so that
//! `cargo test` runs them natively; on `wasm32` the crate exports them.

/// What a rule says, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Says {
    Deny(&'static str, String),
    Skip(&'static str, String),
}

/// The image's configuration's `User`, when it has a configuration.
pub fn check_image(user: Option<&str>) -> Option<Says> {
    let user = user?;
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() || name == "root" || name == "0" {
        return Some(Says::Deny(
            "no-root-user",
            format!("the image runs as root (User `{user}`)"),
        ));
    }
    None
}

/// A layer entry: its path (`usr/bin/su`), whether it is a regular file,
/// and its mode.
pub fn check_entry(path: &str, regular: bool, mode: u32) -> Option<Says> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    if regular && mode & 0o6000 != 0 && !["bin", "sbin", "usr/bin", "usr/sbin"].contains(&dir) {
        return Some(Says::Deny(
            "setuid-outside-bin",
            format!(
                "setuid or setgid file outside the system's program directories (mode {mode:o})"
            ),
        ));
    }
    if regular && (name.ends_with('~') || (name.starts_with('.') && name.ends_with(".swp"))) {
        return Some(Says::Skip(
            "no-editor-backups",
            "an editor's backup or swap file".to_string(),
        ));
    }
    None
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "wit", world: "inspect-step" });

    use exports::tarpool::steps::inspect::Guest;
    use tarpool::steps::inspect_types::{
        Answer, EntryAnswer, EntryHeader, EntryType, ImageInfo, Verdict,
    };

    fn answer(s: super::Says) -> Answer {
        let (verdict, rule, reason) = match s {
            super::Says::Deny(r, why) => (Verdict::Deny, r, why),
            super::Says::Skip(r, why) => (Verdict::Skip, r, why),
        };
        Answer {
            verdict,
            rule: rule.to_string(),
            reason,
        }
    }

    struct Rules;

    impl Guest for Rules {
        fn check_image(image: ImageInfo) -> Vec<Answer> {
            super::check_image(image.config.as_ref().map(|c| c.user.as_str()))
                .map(answer)
                .into_iter()
                .collect()
        }

        fn check_entries(_layer: u32, entries: Vec<EntryHeader>) -> Vec<EntryAnswer> {
            entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    super::check_entry(&e.path, e.kind == EntryType::Regular, e.mode).map(|s| {
                        EntryAnswer {
                            index: i as u32,
                            answer: answer(s),
                        }
                    })
                })
                .collect()
        }
    }

    export!(Rules);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(check_image(None), None);
        assert_eq!(check_image(Some("app")), None);
        assert_eq!(check_image(Some("1000:1000")), None);
        for root in ["", "root", "0", "0:0", "root:wheel"] {
            assert!(
                matches!(check_image(Some(root)), Some(Says::Deny("no-root-user", _))),
                "{root}"
            );
        }
        assert_eq!(check_entry("usr/bin/su", true, 0o4755), None);
        assert_eq!(check_entry("bin/mount", true, 0o4755), None);
        assert_eq!(check_entry("usr/sbin/unix_chkpwd", true, 0o2755), None);
        assert!(matches!(
            check_entry("opt/tool", true, 0o4755),
            Some(Says::Deny(..))
        ));
        assert!(matches!(
            check_entry("usr/bin/x/y", true, 0o2755),
            Some(Says::Deny(..))
        ));
        assert_eq!(check_entry("opt/dir", false, 0o4755), None);
        assert!(matches!(
            check_entry("etc/motd~", true, 0o644),
            Some(Says::Skip(..))
        ));
        assert!(matches!(
            check_entry("etc/.motd.swp", true, 0o644),
            Some(Says::Skip(..))
        ));
        assert_eq!(check_entry("etc/motd", true, 0o644), None);
    }
}
