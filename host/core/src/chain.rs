//! Layer-chain arithmetic (OCI image spec, "ChainID"):
//! `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.

use sha2::{Digest as _, Sha256};

/// Checks the `sha256:<64 lowercase hex>` form.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Chain IDs for the layers `diff_ids` (bottom first).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let mut h = Sha256::new();
                h.update(parent.as_bytes());
                h.update(b" ");
                h.update(d.as_bytes());
                format!("sha256:{}", hex::encode(h.finalize()))
            }
        };
        out.push(next);
    }
    out
}

/// The chain IDs `roots` stand on: each root and its ancestors, following
/// `parent_of` (a layer's parent chain ID, None for a base layer). Unknown
/// roots and cycles end the walk; a layer outside the result is referenced by
/// nothing in `roots`.
pub fn reachable<'a>(
    roots: impl IntoIterator<Item = &'a str>,
    parent_of: impl Fn(&str) -> Option<&'a str>,
) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for root in roots {
        let mut cur = Some(root);
        while let Some(c) = cur {
            if !seen.insert(c.to_string()) {
                break;
            }
            cur = parent_of(c);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    fn check_reachable(
        edges: &[(&'static str, Option<&'static str>)],
        roots: &[&'static str],
        expected: &[&str],
    ) {
        let map: std::collections::HashMap<&str, Option<&'static str>> =
            edges.iter().copied().collect();
        let got = super::reachable(roots.iter().copied(), |c| map.get(c).copied().flatten());
        let want: std::collections::BTreeSet<String> =
            expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "roots {roots:?}");
    }

    #[test]
    fn reachable_layers() {
        let edges = [
            ("a", None),
            ("b", Some("a")),
            ("c", Some("b")),
            ("x", Some("a")),
            ("lone", None),
            ("p", Some("q")),
            ("q", Some("p")),
        ];
        check_reachable(&edges, &["c"], &["a", "b", "c"]);
        check_reachable(&edges, &["c", "x"], &["a", "b", "c", "x"]);
        check_reachable(&edges, &[], &[]);
        check_reachable(&edges, &["lone"], &["lone"]);
        check_reachable(&edges, &["gone"], &["gone"]);
        check_reachable(&edges, &["p"], &["p", "q"]);
    }

    use super::*;

    fn check(diff_ids: &[&str], expected: &[&str]) {
        let ids: Vec<String> = diff_ids.iter().map(|s| s.to_string()).collect();
        assert_eq!(chain_ids(&ids), expected);
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
        let b = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
        // Expected values from `printf '%s %s' PARENT DIFF | sha256sum`.
        let ab = "sha256:71dec89dc33c1a1cd5f73cd1e0885ec74b73b03fb9d5a98fddb6486563565072";
        let aba = "sha256:6ce63e42bcb01bc5db0fa83359c7f44d4a85d4f9dc0d8c225a7264a999912ec8";
        check(&[], &[]);
        check(&[a], &[a]);
        check(&[a, b], &[a, ab]);
        check(&[a, b, a], &[a, ab, aba]);
    }

    #[test]
    fn digest_form() {
        for (s, ok) in [
            (
                "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
                true,
            ),
            (
                "sha256:A3ED95CAEB02FFE68CDD9FD84406680AE93D633CB16422D00E8A7C22955B46D4",
                false,
            ),
            ("sha256:a3ed", false),
            (
                "sha512:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
                false,
            ),
            ("", false),
        ] {
            assert_eq!(is_sha256_digest(s), ok, "{s}");
        }
    }
}
