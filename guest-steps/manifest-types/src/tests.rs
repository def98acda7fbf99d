//! [`guest_parse!`] against stand-ins for the bindings `wit_bindgen`
//! generates (the same names and shapes), so the conversion is checked
//! natively.

use super::*;

/// Stand-ins for the generated `tarpool:steps` interfaces.
mod tarpool {
    pub mod steps {
        pub mod types {
            #[derive(Debug, Clone, Copy)]
            pub enum UnitKind {
                Prefix,
                Archive,
                Registry,
            }
            pub struct Member {
                pub name: String,
                pub size: u64,
            }
            pub struct ManifestOptions {
                pub os: String,
                pub architecture: String,
                pub arch_variant: Option<String>,
                pub max_index_depth: u32,
            }
            #[derive(Debug, PartialEq, Eq)]
            pub enum LayerMedia {
                Tar,
                Gzip,
                Zstd,
                Detect,
            }
            #[derive(Debug, PartialEq, Eq)]
            pub struct LayerRef {
                pub member: String,
                pub media: LayerMedia,
                pub digest: Option<String>,
                pub diff_id: Option<String>,
                pub size: Option<u64>,
            }
            #[derive(Debug, PartialEq, Eq)]
            pub struct RuntimeConfig {
                pub env: Vec<String>,
                pub entrypoint: Vec<String>,
                pub cmd: Vec<String>,
                pub working_dir: String,
                pub user: String,
            }
            #[derive(Debug, PartialEq, Eq)]
            pub struct ImageLayout {
                pub format: String,
                pub layers: Vec<LayerRef>,
                pub config_digest: Option<String>,
                pub config: Option<RuntimeConfig>,
            }
        }
        pub mod source {
            /// Every member holds its own name.
            pub fn read_member(name: &str) -> Result<Vec<u8>, String> {
                Ok(name.as_bytes().to_vec())
            }
        }
    }
}

/// The generated world's export trait.
trait Guest {
    fn parse(
        unit: tarpool::steps::types::UnitKind,
        members: Vec<tarpool::steps::types::Member>,
        options: tarpool::steps::types::ManifestOptions,
    ) -> Result<Option<tarpool::steps::types::ImageLayout>, String>;
}

/// Answers `none` for an archive, fails on an empty prefix, and otherwise
/// echoes what it was given (the format names a registry image): one layer per member, each media in turn,
/// the options in the runtime config, and what it read.
fn echo(
    unit: UnitKind,
    members: &[Member],
    options: &ManifestOptions,
    read: &mut Read<'_>,
) -> Result<Option<ImageLayout>, String> {
    if unit == UnitKind::Archive {
        return Ok(None);
    }
    let first = members.first().ok_or("no members")?;
    let media = [
        LayerMedia::Tar,
        LayerMedia::Gzip,
        LayerMedia::Zstd,
        LayerMedia::Detect,
    ];
    Ok(Some(ImageLayout {
        format: match unit {
            UnitKind::Registry => "echo-registry",
            _ => "echo",
        }
        .into(),
        layers: members
            .iter()
            .zip(media.into_iter().cycle())
            .map(|(m, media)| LayerRef {
                member: m.name.clone(),
                media,
                digest: Some(format!("sha256:{}", m.size)),
                diff_id: None,
                size: Some(m.size),
            })
            .collect(),
        config_digest: None,
        config: Some(RuntimeConfig {
            env: vec![options.os.clone(), options.architecture.clone()],
            entrypoint: options.arch_variant.iter().cloned().collect(),
            cmd: vec![options.max_index_depth.to_string()],
            working_dir: String::from_utf8(read(&first.name)?).map_err(|e| e.to_string())?,
            user: String::new(),
        }),
    }))
}

struct Step;

guest_parse!(Step, echo);

fn members(names: &[&str]) -> Vec<tarpool::steps::types::Member> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| tarpool::steps::types::Member {
            name: (*n).into(),
            size: i as u64,
        })
        .collect()
}

fn options() -> tarpool::steps::types::ManifestOptions {
    tarpool::steps::types::ManifestOptions {
        os: "linux".into(),
        architecture: "arm64".into(),
        arch_variant: Some("v8".into()),
        max_index_depth: 3,
    }
}

#[test]
fn guest_parse_converts_both_ways() {
    use tarpool::steps::types as wit;
    let got = <Step as Guest>::parse(
        wit::UnitKind::Prefix,
        members(&["a", "b", "c", "d", "e"]),
        options(),
    );
    let layer = |member: &str, media, size: u64| wit::LayerRef {
        member: member.into(),
        media,
        digest: Some(format!("sha256:{size}")),
        diff_id: None,
        size: Some(size),
    };
    let want = wit::ImageLayout {
        format: "echo".into(),
        layers: vec![
            layer("a", wit::LayerMedia::Tar, 0),
            layer("b", wit::LayerMedia::Gzip, 1),
            layer("c", wit::LayerMedia::Zstd, 2),
            layer("d", wit::LayerMedia::Detect, 3),
            layer("e", wit::LayerMedia::Tar, 4),
        ],
        config_digest: None,
        config: Some(wit::RuntimeConfig {
            env: vec!["linux".into(), "arm64".into()],
            entrypoint: vec!["v8".into()],
            cmd: vec!["3".into()],
            working_dir: "a".into(),
            user: String::new(),
        }),
    };
    assert_eq!(got, Ok(Some(want)));
}

#[test]
fn guest_parse_passes_none_and_errors_through() {
    use tarpool::steps::types as wit;
    assert_eq!(
        <Step as Guest>::parse(wit::UnitKind::Archive, members(&["a"]), options()),
        Ok(None)
    );
    assert_eq!(
        <Step as Guest>::parse(wit::UnitKind::Prefix, vec![], options()),
        Err("no members".to_string())
    );
    // A registry image arrives as one.
    let got = <Step as Guest>::parse(wit::UnitKind::Registry, members(&["manifest"]), options());
    assert_eq!(got.unwrap().unwrap().format, "echo-registry");
}

#[test]
fn default_options_are_the_hosts() {
    let o = ManifestOptions::default();
    assert_eq!(
        (
            o.os.as_str(),
            o.architecture.as_str(),
            o.arch_variant,
            o.max_index_depth
        ),
        ("linux", "amd64", None, 1)
    );
}
