//! The container's seccomp filter: Docker's default profile
//! (`policies/seccomp/docker-default.json`, Docker 20.10.24's, in Docker's
//! format) turned into the OCI runtime spec's `linux.seccomp` the way Docker
//! does it for a container (Moby's `profiles/seccomp/seccomp_linux.go`,
//! `setupSeccomp`): the rules whose conditions hold for the container's
//! capabilities, the architecture and the kernel are kept, unchanged, in the
//! file's order; everything else gets the default action (EPERM).

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};
use serde::{Deserialize, Deserializer};

/// Docker's default profile, as committed (see `policies/seccomp/README.md`).
const DOCKER_DEFAULT: &str = include_str!("../../../policies/seccomp/docker-default.json");

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The embedded profile is not in Docker's format: a bad file was
    /// committed in its place.
    #[error(
        "the seccomp profile policies/seccomp/docker-default.json is not Docker's format: {0}"
    )]
    BadProfile(String),
    /// The profile's `archMap` has no entry for the architecture (Go's name),
    /// or Docker does not know the architecture at all.
    #[error("Docker's seccomp profile has no entry for the architecture `{0}`")]
    UnknownArch(String),
}

/// Docker's default profile for a container with capabilities `caps`
/// (names like "CAP_CHOWN"), on architecture `arch` (Go's names: "amd64", "arm64", ...), on a kernel of version `kernel` (major, minor).
pub fn docker_default(
    caps: &[&str],
    arch: &str,
    kernel: (u32, u32),
) -> Result<LinuxSeccomp, ProfileError> {
    let profile = Profile::parse()?;
    // Where Docker finds no entry it goes on with no `architectures` (the
    // runtime's native one only); here that is an error instead.
    let entry = profile
        .arch_entry(arch)
        .ok_or_else(|| ProfileError::UnknownArch(arch.to_string()))?;
    // The rules' `arches` are compared with Docker's intermediate
    // ("libseccomp") name, not Go's: the same for amd64, arm64, arm, s390x and
    // ppc64le, different for 386 ("x86") and the MIPS ones. `arch_entry` has
    // checked that Docker knows the name.
    let native = go_to_native(arch).unwrap_or_default();

    let mut architectures = vec![entry.architecture];
    architectures.extend(entry.sub_architectures.iter().copied());

    let syscalls = profile
        .syscalls
        .iter()
        .filter(|rule| rule.applies(caps, native, kernel))
        .map(Rule::to_spec)
        .collect::<Result<Vec<_>, _>>()?;

    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(profile.default_action);
    // Docker carries the profile's `defaultErrnoRet` over unchanged and sets
    // none of its own: 20.10's `setupSeccomp` copies the profile's fields,
    // and the EPERM that later Dockers write is in their profile's data
    // (`"defaultErrnoRet": 1`), not in the code. Docker 20.10.24's profile has
    // none, so neither has the result; the runtime spec makes an absent
    // `defaultErrnoRet` mean EPERM (and runc returns EPERM then).
    seccomp.set_default_errno_ret(profile.default_errno_ret);
    seccomp.set_architectures(Some(architectures));
    seccomp.set_syscalls((!syscalls.is_empty()).then_some(syscalls));
    Ok(seccomp)
}

/// The host's architecture in Go's naming (std::env::consts::ARCH mapped: x86_64→amd64, aarch64→arm64, ...), None if the profile has no archMap entry for it.
pub fn host_arch() -> Option<&'static str> {
    let go = go_arch(std::env::consts::ARCH)?;
    let profile = Profile::parse().ok()?;
    profile.arch_entry(go).map(|_| go)
}

/// The running kernel's (major, minor), from uname.
///
/// Like Docker, only the first two numbers of the release count
/// ("6.1.0-18-amd64" is (6, 1)). A release that does not start with them
/// (never seen on Linux) gives (0, 0): then no `minKernel` condition holds,
/// so rules for newer kernels are left out rather than let in.
pub fn kernel_version() -> (u32, u32) {
    let uname = rustix::system::uname();
    parse_release(&uname.release().to_string_lossy()).unwrap_or((0, 0))
}

/// The leading "major.minor" of a kernel release, as Docker's
/// `fmt.Sscanf(release, "%d.%d", ...)` reads it.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    fn number(s: &str) -> Option<(u32, &str)> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        Some((s[..end].parse().ok()?, &s[end..]))
    }
    let (major, rest) = number(release)?;
    let (minor, _) = number(rest.strip_prefix('.')?)?;
    Some((major, minor))
}

/// Rust's name of an architecture (`std::env::consts::ARCH`, with the
/// target's endianness and pointer width) in Go's (`GOARCH`).
fn go_arch(rust: &str) -> Option<&'static str> {
    let little = cfg!(target_endian = "little");
    let ptr32 = cfg!(target_pointer_width = "32");
    Some(match rust {
        "x86" => "386",
        "x86_64" => "amd64",
        "arm" => "arm",
        "aarch64" => "arm64",
        "mips" if little => "mipsle",
        "mips" => "mips",
        "mips64" if ptr32 && little => "mips64p32le",
        "mips64" if ptr32 => "mips64p32",
        "mips64" if little => "mips64le",
        "mips64" => "mips64",
        "powerpc" => "ppc",
        "powerpc64" if little => "ppc64le",
        "powerpc64" => "ppc64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "loongarch64" => "loong64",
        _ => return None,
    })
}

/// Docker's `goToNative`: Go's architecture name to the one the profile's
/// `arches` conditions use.
fn go_to_native(go: &str) -> Option<&'static str> {
    Some(match go {
        "386" => "x86",
        "amd64" => "amd64",
        "arm" => "arm",
        "arm64" => "arm64",
        "mips64" => "mips64",
        "mips64p32" => "mips64n32",
        "mips64le" => "mipsel64",
        // Sic: Docker's name (and the profile's) for MIPS little-endian n32.
        "mips64p32le" => "mips3l64n32",
        "mipsle" => "mipsel",
        "ppc" => "ppc",
        "ppc64" => "ppc64",
        "ppc64le" => "ppc64le",
        "riscv64" => "riscv64",
        "s390" => "s390",
        "s390x" => "s390x",
        _ => return None,
    })
}

/// Docker's `nativeToSeccomp`: which `archMap` entry an architecture uses.
fn native_to_seccomp(native: &str) -> Option<Arch> {
    Some(match native {
        "x86" => Arch::ScmpArchX86,
        "amd64" => Arch::ScmpArchX86_64,
        "arm" => Arch::ScmpArchArm,
        "arm64" => Arch::ScmpArchAarch64,
        "mips64" => Arch::ScmpArchMips64,
        "mips64n32" => Arch::ScmpArchMips64n32,
        "mipsel64" => Arch::ScmpArchMipsel64,
        "mips3l64n32" => Arch::ScmpArchMipsel64n32,
        // Sic: Docker's key is "mipsle" while `goToNative` gives "mipsel",
        // so 32-bit little-endian MIPS never finds an entry.
        "mipsle" => Arch::ScmpArchMipsel,
        "ppc" => Arch::ScmpArchPpc,
        "ppc64" => Arch::ScmpArchPpc64,
        "ppc64le" => Arch::ScmpArchPpc64le,
        "riscv64" => Arch::ScmpArchRiscv64,
        "s390" => Arch::ScmpArchS390,
        "s390x" => Arch::ScmpArchS390x,
        _ => return None,
    })
}

/// Docker's profile format (Moby's `profiles/seccomp/seccomp.go`), the parts
/// the default profile uses. Unknown fields are ignored, as Go does.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_as_default")]
    arch_map: Vec<ArchEntry>,
    #[serde(default, deserialize_with = "null_as_default")]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchEntry {
    architecture: Arch,
    #[serde(default, deserialize_with = "null_as_default")]
    sub_architectures: Vec<Arch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default, deserialize_with = "null_as_default")]
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_as_default")]
    args: Vec<Arg>,
    #[serde(default, deserialize_with = "null_as_default")]
    includes: Filter,
    #[serde(default, deserialize_with = "null_as_default")]
    excludes: Filter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: usize,
    value: u64,
    /// Go's `uint64` with `omitempty`: absent is 0, and 0 is written absent.
    #[serde(default)]
    value_two: u64,
    op: LinuxSeccompOperator,
}

/// A rule's condition: capabilities (all of them, for `includes`; any, for
/// `excludes`), architectures (Docker's names, see `go_to_native`), and a
/// kernel version from which on.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default, deserialize_with = "null_as_default")]
    caps: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    arches: Vec<String>,
    #[serde(default, deserialize_with = "min_kernel")]
    min_kernel: Option<(u32, u32)>,
}

impl Profile {
    fn parse() -> Result<Profile, ProfileError> {
        serde_json::from_str(DOCKER_DEFAULT).map_err(|e| ProfileError::BadProfile(e.to_string()))
    }

    /// The `archMap` entry for Go's architecture `go`, found as Docker finds
    /// it (through `goToNative` and `nativeToSeccomp`).
    fn arch_entry(&self, go: &str) -> Option<&ArchEntry> {
        let seccomp = native_to_seccomp(go_to_native(go)?)?;
        self.arch_map.iter().find(|e| e.architecture == seccomp)
    }
}

impl Rule {
    /// Whether Docker keeps the rule for a container with `caps` on the
    /// architecture `native` (Docker's name) and kernel `kernel`: none of
    /// the exclusions holds and all of the inclusions do.
    fn applies(&self, caps: &[&str], native: &str, kernel: (u32, u32)) -> bool {
        let (inc, exc) = (&self.includes, &self.excludes);
        let has = |cap: &String| caps.contains(&cap.as_str());
        let excluded = exc.arches.iter().any(|a| a == native)
            || exc.caps.iter().any(has)
            || exc.min_kernel.is_some_and(|min| kernel >= min);
        let included = (inc.arches.is_empty() || inc.arches.iter().any(|a| a == native))
            && inc.caps.iter().all(has)
            && inc.min_kernel.is_none_or(|min| kernel >= min);
        !excluded && included
    }

    fn to_spec(&self) -> Result<LinuxSyscall, ProfileError> {
        let args = self
            .args
            .iter()
            .map(|a| {
                let arg = LinuxSeccompArgBuilder::default()
                    .index(a.index)
                    .value(a.value)
                    .op(a.op);
                let arg = match a.value_two {
                    0 => arg,
                    v => arg.value_two(v),
                };
                // Every field has its value: the builder has nothing to refuse.
                arg.build()
                    .map_err(|e| ProfileError::BadProfile(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut call = LinuxSyscall::default();
        call.set_names(self.names.clone());
        call.set_action(self.action);
        call.set_errno_ret(self.errno_ret);
        // Docker's `args` is written with `omitempty`: no arguments, no field.
        call.set_args((!args.is_empty()).then_some(args));
        Ok(call)
    }
}

/// Go decodes `null` as the empty value; serde would refuse it.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A `minKernel` as Docker reads it (its `KernelVersion.UnmarshalJSON`):
/// "<major>.<minor>", each a decimal number below 256, not "0.0"; "" is a
/// version 0.0 (which every kernel is at or above), `null` none.
fn min_kernel<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(u32, u32)>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    if s.is_empty() {
        return Ok(Some((0, 0)));
    }
    let bad = || {
        serde::de::Error::custom(format!(
            "invalid minKernel {s:?}, expected \"<kernel>.<major>\""
        ))
    };
    let number = |p: &str| -> Option<u32> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse::<u8>().ok().map(u32::from)
    };
    let (major, minor) = s.split_once('.').ok_or_else(bad)?;
    let version = (
        number(major).ok_or_else(bad)?,
        number(minor).ok_or_else(bad)?,
    );
    if version == (0, 0) {
        return Err(bad());
    }
    Ok(Some(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker's default capabilities less CAP_MKNOD and CAP_NET_RAW.
    const CAPS: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];

    /// What the profile does with one syscall.
    #[derive(Debug, PartialEq)]
    enum Verdict {
        /// An allow rule without conditions on the arguments.
        Allow,
        /// Only allow rules with conditions on the arguments: (index, value,
        /// valueTwo, op) of each rule's single condition.
        AllowIf(Vec<(usize, u64, Option<u64>, LinuxSeccompOperator)>),
        /// An errno rule.
        Errno(u32),
        /// No rule: the default action.
        NoRule,
    }
    use Verdict::*;

    const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

    fn verdict(profile: &LinuxSeccomp, name: &str) -> Verdict {
        let rules: Vec<&LinuxSyscall> = profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .collect();
        let actions: Vec<_> = rules.iter().map(|r| r.action()).collect();
        if rules.is_empty() {
            NoRule
        } else if actions
            .iter()
            .all(|&a| a == LinuxSeccompAction::ScmpActAllow)
        {
            if rules.iter().any(|r| r.args().is_none()) {
                Allow
            } else {
                AllowIf(
                    rules
                        .iter()
                        .flat_map(|r| r.args().iter().flatten())
                        .map(|a| (a.index(), a.value(), a.value_two(), a.op()))
                        .collect(),
                )
            }
        } else if let [r] = rules[..] {
            assert_eq!(r.action(), LinuxSeccompAction::ScmpActErrno, "{name}");
            Errno(r.errno_ret().expect("errno rule without errnoRet"))
        } else {
            panic!("{name}: mixed rules {rules:?}")
        }
    }

    /// The profile for `caps`, `arch` and `kernel` gives each syscall its
    /// verdict.
    fn check(caps: &[&str], arch: &str, kernel: (u32, u32), expected: &[(&str, Verdict)]) {
        let profile = docker_default(caps, arch, kernel).unwrap();
        for (name, want) in expected {
            assert_eq!(
                &verdict(&profile, name),
                want,
                "{name} on {arch}, kernel {kernel:?}, caps {caps:?}"
            );
        }
    }

    #[test]
    fn amd64_default_caps() {
        check(
            CAPS,
            "amd64",
            (6, 1),
            &[
                ("read", Allow),
                ("chroot", Allow),
                ("arch_prctl", Allow),
                ("modify_ldt", Allow),
                // Docker's profile lets everyone ptrace from kernel 4.8 on.
                ("ptrace", Allow),
                ("mount", NoRule),
                ("umount2", NoRule),
                ("init_module", NoRule),
                ("finit_module", NoRule),
                ("bpf", NoRule),
                ("keyctl", NoRule),
                ("add_key", NoRule),
                ("unshare", NoRule),
                ("setns", NoRule),
                ("reboot", NoRule),
                ("open_by_handle_at", NoRule),
                ("kcmp", NoRule),
                ("arm_fadvise64_64", NoRule),
                ("s390_runtime_instr", NoRule),
                (
                    "clone",
                    AllowIf(vec![(
                        0,
                        CLONE_NS_FLAGS,
                        None,
                        LinuxSeccompOperator::ScmpCmpMaskedEq,
                    )]),
                ),
                ("clone3", Errno(38)),
                (
                    "personality",
                    AllowIf(
                        [0, 8, 0x20000, 0x20008, 0xffff_ffff]
                            .into_iter()
                            .map(|v| (0, v, None, LinuxSeccompOperator::ScmpCmpEq))
                            .collect(),
                    ),
                ),
            ],
        );
    }

    #[test]
    fn ptrace_needs_kernel_4_8_or_cap_sys_ptrace() {
        check(CAPS, "amd64", (4, 8), &[("ptrace", Allow)]);
        check(CAPS, "amd64", (4, 7), &[("ptrace", NoRule)]);
        check(CAPS, "amd64", (3, 19), &[("ptrace", NoRule)]);
        let with_ptrace = [CAPS, &["CAP_SYS_PTRACE"]].concat();
        check(
            &with_ptrace,
            "amd64",
            (4, 4),
            &[("ptrace", Allow), ("kcmp", Allow)],
        );
    }

    #[test]
    fn cap_sys_admin() {
        let caps = [CAPS, &["CAP_SYS_ADMIN"]].concat();
        check(
            &caps,
            "amd64",
            (6, 1),
            &[
                ("mount", Allow),
                ("umount2", Allow),
                ("unshare", Allow),
                ("setns", Allow),
                ("bpf", Allow),
                ("clone", Allow),
                ("clone3", Allow),
                ("keyctl", NoRule),
                ("init_module", NoRule),
            ],
        );
        let profile = docker_default(&caps, "amd64", (6, 1)).unwrap();
        let clone_rules: Vec<_> = profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == "clone"))
            .collect();
        assert_eq!(clone_rules.len(), 1);
        assert_eq!(clone_rules[0].args(), &None);
    }

    #[test]
    fn arm64() {
        check(
            CAPS,
            "arm64",
            (6, 1),
            &[
                ("read", Allow),
                ("arm_fadvise64_64", Allow),
                ("arm_sync_file_range", Allow),
                ("sync_file_range2", Allow),
                ("breakpoint", Allow),
                ("cacheflush", Allow),
                ("set_tls", Allow),
                ("arch_prctl", NoRule),
                ("modify_ldt", NoRule),
                ("clone3", Errno(38)),
            ],
        );
        let profile = docker_default(CAPS, "arm64", (6, 1)).unwrap();
        assert_eq!(
            profile.architectures(),
            &Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm])
        );
    }

    #[test]
    fn s390x_clone_takes_flags_second() {
        check(
            CAPS,
            "s390x",
            (6, 1),
            &[
                (
                    "clone",
                    AllowIf(vec![(
                        1,
                        CLONE_NS_FLAGS,
                        None,
                        LinuxSeccompOperator::ScmpCmpMaskedEq,
                    )]),
                ),
                ("s390_runtime_instr", Allow),
            ],
        );
    }

    #[test]
    fn unknown_arches() {
        // Not known to Docker; known to Docker but not in the profile's
        // archMap (x86 is only a sub-architecture of amd64's entry).
        for arch in ["sparc64", "x86_64", "386", "ppc64le", ""] {
            assert!(
                matches!(docker_default(CAPS, arch, (6, 1)), Err(ProfileError::UnknownArch(a)) if a == arch),
                "{arch}"
            );
        }
    }

    #[test]
    fn serializes_as_the_runtime_spec() {
        let profile = docker_default(CAPS, "amd64", (6, 1)).unwrap();
        let json = serde_json::to_value(&profile).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        // Carried over from the profile, which has none (Docker 20.10.24's):
        // the runtime spec's default, EPERM.
        assert_eq!(json.get("defaultErrnoRet"), None);
        assert_eq!(
            json["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let clone3 = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone3"]))
            .unwrap();
        assert_eq!(
            clone3,
            &serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
        );
        let clone = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone"]))
            .unwrap();
        assert_eq!(
            clone["args"],
            serde_json::json!([{"index": 0, "value": 2114060288u64, "op": "SCMP_CMP_MASKED_EQ"}])
        );
    }

    #[test]
    fn allowed_syscalls_amd64_default_caps() {
        let profile = docker_default(CAPS, "amd64", (6, 1)).unwrap();
        let allowed = |unconditional: bool| {
            let mut names: Vec<&str> = profile
                .syscalls()
                .iter()
                .flatten()
                .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
                .filter(|r| !unconditional || r.args().is_none())
                .flat_map(|r| r.names().iter().map(String::as_str))
                .collect();
            names.sort_unstable();
            names.dedup();
            names.len()
        };
        // The 346 of the unconditional rule, ptrace (kernel >= 4.8),
        // arch_prctl, modify_ldt, chroot; and, on conditions on their
        // arguments, personality and clone.
        assert_eq!(allowed(true), 350);
        assert_eq!(allowed(false), 352);
    }

    #[test]
    fn kernel_releases() {
        for (release, want) in [
            ("6.1.0-18-amd64", Some((6, 1))),
            ("3.12-1-amd64", Some((3, 12))),
            ("5.15.0", Some((5, 15))),
            ("4.19.0+", Some((4, 19))),
            ("6", None),
            ("x.1", None),
            ("", None),
        ] {
            assert_eq!(parse_release(release), want, "{release}");
        }
        let (major, _) = kernel_version();
        assert!(major >= 3);
    }

    #[test]
    fn min_kernel_as_docker_reads_it() {
        let read = |s: &str| {
            let f: Result<Filter, _> = serde_json::from_str(&format!(r#"{{"minKernel": {s}}}"#));
            f.map(|f| f.min_kernel).map_err(|_| ())
        };
        assert_eq!(read(r#""4.8""#), Ok(Some((4, 8))));
        assert_eq!(read(r#""10.255""#), Ok(Some((10, 255))));
        assert_eq!(read("null"), Ok(None));
        assert_eq!(read(r#""""#), Ok(Some((0, 0))));
        for bad in [
            r#""4""#,
            r#""4.8.1""#,
            r#""4.256""#,
            r#""0.0""#,
            r#""+4.8""#,
            r#""4.""#,
            "48",
        ] {
            assert_eq!(read(bad), Err(()), "{bad}");
        }
    }

    #[test]
    fn host_arch_is_in_the_profile() {
        if let Some(arch) = host_arch() {
            docker_default(CAPS, arch, kernel_version()).unwrap();
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host_arch(), Some("amd64"));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(host_arch(), Some("arm64"));
    }
}
