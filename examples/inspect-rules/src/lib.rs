//! An example inspect step: five rules of an operator's own, as a
//! component of tarpool's `inspect-contents-step` world
//! (`wit/tarpool.wit`): three judge headers, two read small files.
//!
//! - `no-root-user` (deny): an image whose configuration runs its command
//!   as root (no `User`, `root` or uid 0). Images without a configuration
//!   (a bare layer, a rootfs archive) are not judged by it.
//! - `setuid-outside-bin` (deny): a setuid or setgid file anywhere but
//!   directly in `/bin`, `/sbin`, `/usr/bin` or `/usr/sbin` (Debian's
//!   `unix_chkpwd` is setgid in `/usr/sbin`).
//! - `no-editor-backups` (skip): files named `*~` or `.*.swp` are not
//!   written.
//! - `no-empty-root-password` (deny): `etc/shadow` gives `root` an empty
//!   password (anyone may log in as root without one). An `etc/shadow`
//!   the step cannot read (a link, or over 64 KiB) is denied too.
//! - `no-private-keys` (skip): a `*.pem` or `*.key` file, or an SSH key
//!   (`id_rsa`, `id_ecdsa`, `id_ed25519`, `id_dsa`), that holds a PEM or
//!   OpenSSH private key is not written; nor is a `*.key` or SSH key file
//!   it cannot read. A `*.pem` over 64 KiB (a certificate bundle) is kept
//!   unread, with a note in the audit log.
//!
//! The rules are plain functions ([`check_image`], [`check_entry`],
//! [`wants_contents`], [`check_contents`]) so that `cargo test` runs them
//! natively; on `wasm32` the crate exports them.

/// What a rule says, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Says {
    Deny(&'static str, String),
    Skip(&'static str, String),
    /// Allowed, with a note in the audit log.
    Note(&'static str, String),
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

/// What an entry is, as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    /// A symlink or a hard link: its name says nothing of what it holds.
    Link,
    Other,
}

/// A layer entry: its path (`usr/bin/su`), kind, mode and size.
pub fn check_entry(path: &str, kind: Kind, mode: u32, size: u64) -> Option<Says> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    let regular = kind == Kind::Regular;
    let unreadable = kind == Kind::Link || (regular && size > MAX_CONTENTS);
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
    if path == "etc/shadow" && unreadable {
        return Some(Says::Deny(
            "no-empty-root-password",
            "etc/shadow is a link or over 64 KiB: its root password cannot be checked".to_string(),
        ));
    }
    if key_name(name) && unreadable {
        return Some(Says::Skip(
            "no-private-keys",
            "a key file that cannot be read (a link, or over 64 KiB)".to_string(),
        ));
    }
    if name.ends_with(".pem") && regular && size > MAX_CONTENTS {
        return Some(Says::Note(
            "no-private-keys",
            "not read: over 64 KiB (a certificate bundle?)".to_string(),
        ));
    }
    None
}

/// A file name a private key goes by (a `*.pem` may be a certificate).
fn key_name(name: &str) -> bool {
    name.ends_with(".key") || ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"].contains(&name)
}

/// The largest file whose bytes tarpool shows a step.
pub const MAX_CONTENTS: u64 = 64 << 10;

/// Whether the rules read the bytes of the regular file `path` of `size`
/// bytes.
pub fn wants_contents(path: &str, size: u64) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    size <= MAX_CONTENTS && (path == "etc/shadow" || name.ends_with(".pem") || key_name(name))
}

/// The bytes of a file [`wants_contents`] asked for.
pub fn check_contents(path: &str, bytes: &[u8]) -> Option<Says> {
    if path == "etc/shadow" {
        let empty_root = bytes
            .split(|&b| b == b'\n')
            .any(|line| line.starts_with(b"root::"));
        return empty_root.then(|| {
            Says::Deny(
                "no-empty-root-password",
                "etc/shadow gives root an empty password".to_string(),
            )
        });
    }
    let holds = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    if holds(b"-----BEGIN ") && holds(b"PRIVATE KEY-----") {
        return Some(Says::Skip(
            "no-private-keys",
            "a private key: keys are given to a container at run time, not baked into its image"
                .to_string(),
        ));
    }
    None
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "wit", world: "inspect-contents-step" });

    use exports::tarpool::steps::inspect::Guest;
    use exports::tarpool::steps::inspect_contents::Guest as Contents;
    use tarpool::steps::inspect_types::{
        Answer, EntryAnswer, EntryHeader, EntryType, ImageInfo, Verdict,
    };

    fn answer(s: super::Says) -> Answer {
        let (verdict, rule, reason) = match s {
            super::Says::Deny(r, why) => (Verdict::Deny, r, why),
            super::Says::Skip(r, why) => (Verdict::Skip, r, why),
            super::Says::Note(r, why) => (Verdict::Allow, r, why),
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
                    let kind = match e.kind {
                        EntryType::Regular => super::Kind::Regular,
                        EntryType::Symlink | EntryType::Hardlink => super::Kind::Link,
                        _ => super::Kind::Other,
                    };
                    super::check_entry(&e.path, kind, e.mode, e.size).map(|s| EntryAnswer {
                        index: i as u32,
                        answer: answer(s),
                    })
                })
                .collect()
        }
    }

    impl Contents for Rules {
        fn want_contents(_layer: u32, entries: Vec<EntryHeader>) -> Vec<u32> {
            entries
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.kind == EntryType::Regular && super::wants_contents(&e.path, e.size)
                })
                .map(|(i, _)| i as u32)
                .collect()
        }

        fn check_contents(_layer: u32, file: EntryHeader, bytes: Vec<u8>) -> Option<Answer> {
            super::check_contents(&file.path, &bytes).map(answer)
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
        fn check(path: &str, kind: Kind, mode: u32, size: u64, expected: Option<&str>) {
            let got = check_entry(path, kind, mode, size).map(|s| match s {
                Says::Deny(r, _) => format!("deny {r}"),
                Says::Skip(r, _) => format!("skip {r}"),
                Says::Note(r, _) => format!("note {r}"),
            });
            assert_eq!(got.as_deref(), expected, "{path} {kind:?} {mode:o} {size}");
        }
        use Kind::*;
        let big = MAX_CONTENTS + 1;
        for (path, kind, mode, size, expected) in [
            ("usr/bin/su", Regular, 0o4755, 3, None),
            ("bin/mount", Regular, 0o4755, 3, None),
            ("usr/sbin/unix_chkpwd", Regular, 0o2755, 3, None),
            (
                "opt/tool",
                Regular,
                0o4755,
                3,
                Some("deny setuid-outside-bin"),
            ),
            (
                "usr/bin/x/y",
                Regular,
                0o2755,
                3,
                Some("deny setuid-outside-bin"),
            ),
            ("opt/dir", Other, 0o4755, 0, None),
            (
                "etc/motd~",
                Regular,
                0o644,
                3,
                Some("skip no-editor-backups"),
            ),
            (
                "etc/.motd.swp",
                Regular,
                0o644,
                3,
                Some("skip no-editor-backups"),
            ),
            ("etc/motd", Regular, 0o644, 3, None),
            ("etc/shadow", Regular, 0o640, 900, None),
            (
                "etc/shadow",
                Regular,
                0o640,
                big,
                Some("deny no-empty-root-password"),
            ),
            (
                "etc/shadow",
                Link,
                0o777,
                0,
                Some("deny no-empty-root-password"),
            ),
            ("srv/a.key", Regular, 0o600, 900, None),
            (
                "srv/a.key",
                Regular,
                0o600,
                big,
                Some("skip no-private-keys"),
            ),
            (
                "root/.ssh/id_rsa",
                Link,
                0o777,
                0,
                Some("skip no-private-keys"),
            ),
            (
                "etc/ssl/bundle.pem",
                Regular,
                0o644,
                big,
                Some("note no-private-keys"),
            ),
            ("etc/ssl/certs/a.pem", Link, 0o777, 0, None),
        ] {
            check(path, kind, mode, size, expected);
        }
    }

    #[test]
    fn contents() {
        for (path, size, wanted) in [
            ("etc/shadow", 900, true),
            ("etc/shadow", MAX_CONTENTS + 1, false),
            ("srv/tls/server.key", 1700, true),
            ("etc/ssl/certs/ca.pem", 1200, true),
            ("root/.ssh/id_ed25519", 400, true),
            ("root/.ssh/id_ed25519.pub", 100, false),
            ("etc/passwd", 900, false),
        ] {
            assert_eq!(wants_contents(path, size), wanted, "{path} {size}");
        }
        let shadow = |text: &str| check_contents("etc/shadow", text.as_bytes());
        assert!(matches!(
            shadow("daemon:*:1::::::\nroot::19000:0:99999:7:::\n"),
            Some(Says::Deny("no-empty-root-password", _))
        ));
        assert_eq!(shadow("root:*:19000:0:99999:7:::\n"), None);
        assert_eq!(shadow("root:$y$j9T$abc:19000::::::\nuser::1::::::\n"), None);
        let key =
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn==\n-----END OPENSSH PRIVATE KEY-----\n";
        assert!(matches!(
            check_contents("root/.ssh/id_ed25519", key),
            Some(Says::Skip("no-private-keys", _))
        ));
        let rsa = b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(
            check_contents("srv/a.key", rsa),
            Some(Says::Skip(..))
        ));
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(check_contents("etc/ssl/certs/ca.pem", cert), None);
    }
}
