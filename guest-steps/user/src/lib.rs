//! User component: the `user-step` world of `wit/tarpool.wit`. `tarpool
//! exec` and `tarpool bundle` ask it who an image's command runs as: the
//! config's `User` resolved against the image's own /etc/passwd and
//! /etc/group, whose bytes the host reads (regular files beneath the
//! image's root, at most 1 MiB each) and passes in. The parsing of those
//! attacker-controlled bytes happens here, in a component with no
//! capabilities, fuel and a memory cap, never in the host.
//!
//! The logic is a plain function ([`resolve_user`]) so it can be
//! unit-tested natively; on `wasm32` the crate exports the world. It never
//! panics on any input, and every error is one bounded line without
//! control characters that blames the input.

use guest_text::quote;

/// The longest name quoted in a message.
const MAX_NAME_CHARS: usize = 64;
/// The most supplementary groups kept (the kernel's NGROUPS_MAX).
pub const MAX_GROUPS: usize = 65536;

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves a config's `User` (`uid`, `uid:gid`, `name`, `name:group`, or
/// empty for root) against the image's /etc/passwd and /etc/group (None:
/// absent). Supplementary groups are the /etc/group entries listing the
/// user's name, unless the spec names a group. Lines that do not parse are
/// skipped, as libc does.
pub fn resolve_user(
    spec: &str,
    passwd: Option<&[u8]>,
    group: Option<&[u8]>,
) -> Result<Ids, String> {
    let passwd = String::from_utf8_lossy(passwd.unwrap_or(b""));
    let group = String::from_utf8_lossy(group.unwrap_or(b""));
    // name, uid, gid, home
    let users: Vec<(&str, u32, u32, &str)> = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                *f.first()?,
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                f.get(5).copied().unwrap_or(""),
            ))
        })
        .collect();
    // name, gid, members
    let groups: Vec<(&str, u32, &str)> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                *f.first()?,
                f.get(2)?.parse().ok()?,
                f.get(3).copied().unwrap_or(""),
            ))
        })
        .collect();
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = match u.parse::<u32>() {
        Ok(uid) => users
            .iter()
            .find(|e| e.1 == uid)
            .copied()
            .map_or((None, uid, 0, "/"), |e| (Some(e.0), e.1, e.2, e.3)),
        Err(_) => users
            .iter()
            .find(|e| e.0 == u)
            .map(|e| (Some(e.0), e.1, e.2, e.3))
            .ok_or_else(|| {
                format!(
                    "user {} is not in the image's /etc/passwd",
                    quote(u, MAX_NAME_CHARS)
                )
            })?,
    };
    let (name, uid, mut gid, home) = entry;
    let mut supplementary = Vec::new();
    match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => gid = n,
            Err(_) => {
                gid = groups
                    .iter()
                    .find(|e| e.0 == g)
                    .map(|e| e.1)
                    .ok_or_else(|| {
                        format!(
                            "group {} is not in the image's /etc/group",
                            quote(g, MAX_NAME_CHARS)
                        )
                    })?
            }
        },
        None => {
            if let Some(name) = name {
                for e in &groups {
                    if supplementary.len() >= MAX_GROUPS {
                        break;
                    }
                    if e.2.split(',').any(|m| m.trim() == name) && !supplementary.contains(&e.1) {
                        supplementary.push(e.1);
                    }
                }
            }
        }
    }
    let home = if home.is_empty() || home.chars().any(guest_text::unsafe_char) {
        "/"
    } else {
        home
    };
    Ok(Ids {
        uid,
        gid,
        groups: supplementary,
        home: home.chars().take(4096).collect(),
    })
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "user-step" });

    struct Step;

    impl Guest for Step {
        fn resolve_user(
            spec: String,
            passwd: Option<Vec<u8>>,
            group: Option<Vec<u8>>,
        ) -> Result<UserIds, String> {
            super::resolve_user(&spec, passwd.as_deref(), group.as_deref()).map(|i| UserIds {
                uid: i.uid,
                gid: i.gid,
                groups: i.groups,
                home: i.home,
            })
        }
    }

    export!(Step);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nbroken line\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\nwheel:x:10:root\n";

    fn check(spec: &str, want: Result<(u32, u32, &[u32], &str), &str>) {
        let got = resolve_user(spec, Some(PASSWD.as_bytes()), Some(GROUP.as_bytes()));
        let want = want
            .map(|(uid, gid, groups, home)| Ids {
                uid,
                gid,
                groups: groups.to_vec(),
                home: home.into(),
            })
            .map_err(|e| e.to_string());
        assert_eq!(got, want, "{spec:?}");
    }

    #[test]
    fn users_resolve_from_the_images_databases() {
        check("", Ok((0, 0, &[10], "/root")));
        check("app", Ok((1000, 1000, &[2000], "/home/app")));
        check("1000", Ok((1000, 1000, &[2000], "/home/app")));
        check("4242", Ok((4242, 0, &[], "/")));
        check("app:extra", Ok((1000, 2000, &[], "/home/app")));
        check("app:7", Ok((1000, 7, &[], "/home/app")));
        check("5:6", Ok((5, 6, &[], "/")));
        check(
            "nobody",
            Err("user `nobody` is not in the image's /etc/passwd"),
        );
        check(
            "app:nogroup",
            Err("group `nogroup` is not in the image's /etc/group"),
        );
        check("a\nb", Err("user `a?b` is not in the image's /etc/passwd"));
        assert_eq!(resolve_user("7", None, None).unwrap().uid, 7);
    }

    #[test]
    fn hostile_databases_give_an_answer_or_one_line() {
        let bad: [&[u8]; 5] = [
            b"\xff\xfe:x:0:0::/r\x1b[2J:/bin/sh\n",
            b"root:x:99999999999:0::/:/bin/sh\n",
            b"::::::::\n:\n\n",
            b"app:x:1000:1000::/home/\x00app:/bin/sh\n",
            &[b':'; 10_000],
        ];
        for p in bad {
            for spec in ["", "app", "root:wheel", "0:0"] {
                match resolve_user(spec, Some(p), Some(p)) {
                    Ok(ids) => assert!(!ids.home.chars().any(guest_text::unsafe_char)),
                    Err(e) => assert!(!e.contains('\n') && e.len() < 300, "{e}"),
                }
            }
        }
    }
}
