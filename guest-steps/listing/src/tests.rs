use super::*;

/// What a page reads as: its names, its refusals, and its next page as
/// `AUTHORITY|PATH` (no authority: `|PATH`).
type Expected<'a> = Result<(&'a [&'a str], &'a [&'a str], Option<&'a str>), &'a str>;

fn check(of: &ListOf, body: &str, link: Option<&str>, expected: Expected) {
    let got = read_page(of, body.as_bytes(), link);
    let got = got.as_ref().map(|p| {
        (
            p.names.iter().map(String::as_str).collect::<Vec<_>>(),
            p.refused.iter().map(String::as_str).collect::<Vec<_>>(),
            p.next.as_ref().map(|n| {
                format!(
                    "{}|{}",
                    n.authority.as_deref().unwrap_or(""),
                    n.path_and_query
                )
            }),
        )
    });
    let want = expected.map(|(n, r, next)| (n.to_vec(), r.to_vec(), next.map(str::to_string)));
    match (&got, &want) {
        (Ok(g), Ok(w)) => assert_eq!(g, w, "{body} {link:?}"),
        (Err(g), Err(w)) => assert!(g.starts_with(*w), "{body} {link:?}: {g}"),
        _ => panic!("{body} {link:?}: got {got:?}, expected {want:?}"),
    }
}

#[test]
fn catalogs() {
    let of = ListOf::Repositories;
    check(
        &of,
        r#"{"repositories":["library/py","team/api"]}"#,
        None,
        Ok((&["library/py", "team/api"], &[], None)),
    );
    check(&of, r#"{"repositories":[]}"#, None, Ok((&[], &[], None)));
    check(
        &of,
        r#"{"repositories":null}"#,
        None,
        Err("the registry's catalog has no"),
    );
    check(&of, r#"{}"#, None, Err("the registry's catalog has no"));
    check(
        &of,
        r#"{"repositories":["ok","Team/API","../x","a//b","x\n\u202e"]}"#,
        None,
        Ok((
            &["ok"],
            &[
                "`Team/API` is not a repository name of the distribution specification",
                "`../x` is not a repository name of the distribution specification",
                "`a//b` is not a repository name of the distribution specification",
                "`x??` is not a repository name of the distribution specification",
            ],
            None,
        )),
    );
    check(
        &of,
        r#"{"repositories":[1]}"#,
        None,
        Err("the registry's catalog is not the distribution specification's JSON"),
    );
    check(
        &of,
        "\u{0}\u{ff}",
        None,
        Err("the registry's catalog is not the distribution specification's JSON"),
    );
}

#[test]
fn tag_lists() {
    let of = ListOf::Tags("team/api".into());
    check(
        &of,
        r#"{"name":"team/api","tags":["v1","latest","_x.y-z"]}"#,
        None,
        Ok((&["v1", "latest", "_x.y-z"], &[], None)),
    );
    check(
        &of,
        r#"{"name":"team/api","tags":null}"#,
        None,
        Ok((&[], &[], None)),
    );
    check(
        &of,
        r#"{"name":"team/api","tags":["-x","a:b","ok"]}"#,
        None,
        Ok((
            &["ok"],
            &[
                "`-x` is not a tag name of the distribution specification",
                "`a:b` is not a tag name of the distribution specification",
            ],
            None,
        )),
    );
    check(
        &of,
        r#"{"name":"other","tags":["v1"]}"#,
        None,
        Err("asked for the tags of `team/api`, the registry listed those of `other`"),
    );
    check(
        &of,
        r#"{"tags":["v1"]}"#,
        None,
        Err("the tag list of `team/api` is not the distribution specification's JSON"),
    );
}

#[test]
fn next_pages() {
    let of = ListOf::Repositories;
    let body = r#"{"repositories":["a"]}"#;
    for (link, expected) in [
        // docker-registry's own form.
        (
            r#"</v2/_catalog?last=a&n=1>; rel="next""#,
            Ok(Some("|/v2/_catalog?last=a&n=1")),
        ),
        (
            "</v2/_catalog?last=a>;rel=next",
            Ok(Some("|/v2/_catalog?last=a")),
        ),
        (
            r#"<https://r.example.com:5000/v2/_catalog?last=a>; rel="next""#,
            Ok(Some("r.example.com:5000|/v2/_catalog?last=a")),
        ),
        (
            r#"</v2/_catalog?n=1>; rel="prev", </v2/_catalog?last=a>; rel="next last""#,
            Ok(Some("|/v2/_catalog?last=a")),
        ),
        (r#"</v2/_catalog?n=1>; rel="prev""#, Ok(None)),
        ("", Ok(None)),
        (
            r#"<_catalog?last=a>; rel="next""#,
            Err("names a next page that is not"),
        ),
        (
            r#"</v1/x>; rel="next""#,
            Err("names a next page that is not"),
        ),
        (
            r#"</v2/a b>; rel="next""#,
            Err("names a next page that is not"),
        ),
        (
            r#"<https://evil/>; rel="next""#,
            Err("names a next page that is not"),
        ),
        (
            r#"<https://e\vil/v2/x>; rel="next""#,
            Err("names a next page on a host"),
        ),
        (r#"</v2/x; rel="next""#, Err("has an unterminated")),
        (r#"/v2/x; rel="next""#, Err("is not a list of")),
        (
            r#"</v2/x>; rel="next; x"#,
            Err("has an unterminated quoted"),
        ),
        (
            r#"</v2/x>; rel=next, </v2/y>; rel=next"#,
            Err("names two next pages"),
        ),
        (r#"</v2/x> junk; rel=next"#, Err("has text between")),
    ] {
        let expected = expected.map(|next| (&["a"][..], &[][..], next));
        let full;
        let expected = match expected {
            Ok(x) => Ok(x),
            Err(e) => {
                full = format!("the registry's `Link` header {e}");
                Err(full.as_str())
            }
        };
        check(&of, body, Some(link), expected);
    }
}

/// Hostile pages: an answer or one bounded line, never a panic; refusals
/// are counted beyond the ones kept.
#[test]
fn hostile_pages() {
    let many: Vec<String> = (0..100).map(|i| format!("\"BAD{i}\"")).collect();
    let body = format!(r#"{{"repositories":[{}]}}"#, many.join(","));
    let p = read_page(&ListOf::Repositories, body.as_bytes(), None).unwrap();
    assert_eq!((p.refused.len(), p.refused_count), (MAX_REFUSED_KEPT, 100));
    let long_link = format!("<{}>; rel=next", "/v2/".repeat(2000));
    for (body, link) in [
        ("[".repeat(100_000), None),
        (
            r#"{"repositories":["a"]}"#.to_string(),
            Some(long_link.as_str()),
        ),
        (
            r#"{"repositories":["a"]}"#.to_string(),
            Some("<\u{202e}/v2/x>; rel=next"),
        ),
    ] {
        match read_page(&ListOf::Repositories, body.as_bytes(), link) {
            Ok(p) => assert!(p.next.is_none()),
            Err(e) => assert!(
                !e.contains('\n') && e.chars().count() <= guest_text::MAX_LINE_CHARS + 3,
                "{e}"
            ),
        }
    }
}
