//! The OCI runtime bundle's `config.json`, made with `oci-spec`'s runtime
//! types from the image's config and tarpool's hardened defaults. Pure: no
//! I/O (the caller resolved the user, the command and the seccomp profile).
//!
//! The defaults are Docker's, where Docker has one: its capability set
//! (without CAP_MKNOD and CAP_NET_RAW, see [`CAPS`]), its seccomp profile,
//! its masked and read-only paths, a private /dev with the runtime's
//! standard nodes, /proc, a read-only /sys; new pid, mount, IPC, UTS,
//! cgroup and network namespaces; and, unless `--userns host`, a user
//! namespace whose root is an unprivileged host uid.

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::path::PathBuf;

/// The OCI runtime spec version written.
pub const OCI_VERSION: &str = "1.0.2";

/// The command's capabilities (bounding, effective, permitted; none
/// inheritable or ambient): Docker's default set without CAP_MKNOD (a node
/// made in /dev/shm would open the host's disks were the user namespace
/// off) and CAP_NET_RAW (raw and packet sockets; with `--net host`, on the
/// host's interfaces). Under a user namespace they are the namespace's,
/// over its own resources only.
pub const CAPS: [Capability; 12] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// [`CAPS`] by their kernel names, for the seccomp profile's conditions.
pub fn cap_names() -> Vec<String> {
    CAPS.iter()
        .map(|c| {
            serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect()
}

/// Docker's masked paths: files get /dev/null bound over them, directories
/// an empty read-only tmpfs.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths: kernel settings (`kernel.core_pattern`,
/// `vm.*`...), the SysRq trigger, interrupt affinities, bus and filesystem
/// tunables.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The command's network (`--net`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Net {
    /// A network namespace of its own, with only `lo` (up).
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

/// A contiguous range of host ids the container's 0.. map to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub host: u32,
    pub size: u32,
}

/// Resource limits (cgroup), each off when `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory; swap is not allowed beyond it.
    pub memory: Option<i64>,
    /// Processes (and threads).
    pub pids: Option<i64>,
    /// CPUs' worth of time (0.5: half of one CPU).
    pub cpus: Option<f64>,
}

/// The CFS period the CPU quota is a share of, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Who runs what, where: resolved by the caller from the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The program (searched in `env`'s PATH by the runtime) first.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything a bundle's `config.json` is made from.
pub struct Input<'a> {
    pub hostname: &'a str,
    /// The root filesystem (absolute, or relative to the bundle).
    pub root: PathBuf,
    pub command: &'a Command,
    pub net: Net,
    /// The user namespace's mapping; `None`: the host's user namespace.
    pub userns: Option<IdRange>,
    pub limits: Limits,
    /// The cgroup, relative to the cgroup mount points.
    pub cgroup: String,
    pub seccomp: LinuxSeccomp,
}

/// The error of a spec that cannot be made (a bad limit, or oci-spec's).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Limit(String),
    #[error("making the OCI runtime config: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

fn mount(
    dest: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<oci_spec::runtime::Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The bundle's runtime config.
pub fn build(input: &Input<'_>) -> Result<Spec, SpecError> {
    let c = input.command;
    let caps: oci_spec::runtime::Capabilities = CAPS.iter().copied().collect();
    // A command run as another user than root gets none to use (as under
    // Docker): only the bounding set, which a setuid-root program of the
    // image may take up.
    let usable = if c.uid == 0 {
        caps.clone()
    } else {
        oci_spec::runtime::Capabilities::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(usable.clone())
        .permitted(usable)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(c.uid)
                .gid(c.gid)
                .additional_gids(c.groups.clone())
                .build()?,
        )
        .args(c.args.clone())
        .env(c.env.clone())
        .cwd(c.cwd.as_str())
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()?])
        // Setuid programs of the image work inside (as under Docker).
        .no_new_privileges(false)
        .build()?;

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
    ];
    // sysfs needs the network namespace's owner: with the host's network
    // under a user namespace the runtimes cannot mount it, so it is bound
    // from the host's, read-only (runc's own fallback, made explicit).
    mounts.push(match (input.net, input.userns) {
        (Net::Host, Some(_)) => mount(
            "/sys",
            "none",
            "/sys",
            &["rbind", "nosuid", "noexec", "nodev", "ro"],
        )?,
        _ => mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    });

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ];
    if input.net == Net::None {
        namespaces.push(LinuxNamespaceType::Network);
    }
    if input.userns.is_some() {
        namespaces.push(LinuxNamespaceType::User);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<_>, _>>()?;

    let l = input.limits;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        // Every device denied but the runtime's standard nodes (the
        // runtimes add those).
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ]);
    if let Some(m) = l.memory {
        if m < 4 << 20 {
            return Err(SpecError::Limit(format!("--memory {m}: at least 4 MiB")));
        }
        resources = resources.memory(LinuxMemoryBuilder::default().limit(m).swap(m).build()?);
    }
    if let Some(p) = l.pids {
        if p < 1 {
            return Err(SpecError::Limit(format!("--pids {p}: at least 1")));
        }
        resources = resources.pids(LinuxPidsBuilder::default().limit(p).build()?);
    }
    if let Some(cpus) = l.cpus {
        if !(cpus.is_finite() && (0.01..=1024.0).contains(&cpus)) {
            return Err(SpecError::Limit(format!(
                "--cpus {cpus}: between 0.01 and 1024"
            )));
        }
        let quota = (cpus * CPU_PERIOD_US as f64).round() as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?)
        .cgroups_path(PathBuf::from(&input.cgroup))
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .seccomp(input.seccomp.clone());
    if let Some(r) = input.userns {
        let map = vec![LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(r.host)
            .size(r.size)
            .build()?];
        linux = linux.uid_mappings(map.clone()).gid_mappings(map);
    }

    Ok(SpecBuilder::default()
        .version(OCI_VERSION)
        .root(
            RootBuilder::default()
                .path(input.root.clone())
                .readonly(false)
                .build()?,
        )
        .hostname(input.hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn command() -> Command {
        Command {
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/work".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![2000],
        }
    }

    fn spec(net: Net, userns: Option<IdRange>, limits: Limits) -> Result<Value, String> {
        let c = command();
        build(&Input {
            hostname: "act",
            root: "rootfs".into(),
            command: &c,
            net,
            userns,
            limits,
            cgroup: "/tarpool/act.1".into(),
            seccomp: LinuxSeccomp::default(),
        })
        .map(|s| serde_json::to_value(&s).unwrap())
        .map_err(|e| e.to_string())
    }

    /// `pointer` in the spec made with these options is `want`.
    fn check(net: Net, userns: Option<IdRange>, limits: Limits, pointer: &str, want: Value) {
        let got = spec(net, userns, limits).unwrap();
        assert_eq!(
            got.pointer(pointer),
            Some(&want).filter(|w| !w.is_null()),
            "{pointer}: {got:#}"
        );
    }

    const RANGE: IdRange = IdRange {
        host: 524288,
        size: 65536,
    };

    fn ns(types: &[&str]) -> Value {
        types.iter().map(|t| json!({ "type": t })).collect()
    }

    #[test]
    fn fields() {
        let none = Limits::default();
        let cases: Vec<(Net, Option<IdRange>, Limits, &str, Value)> = vec![
            (Net::None, None, none, "/ociVersion", json!("1.0.2")),
            (Net::None, None, none, "/hostname", json!("act")),
            (
                Net::None,
                None,
                none,
                "/root",
                json!({"path": "rootfs", "readonly": false}),
            ),
            (
                Net::None,
                None,
                none,
                "/process/user",
                json!({"uid": 1000, "gid": 1000, "additionalGids": [2000]}),
            ),
            (Net::None, None, none, "/process/cwd", json!("/work")),
            (Net::None, None, none, "/process/args/0", json!("/bin/sh")),
            (
                Net::None,
                None,
                none,
                "/process/noNewPrivileges",
                json!(false),
            ),
            (
                Net::None,
                None,
                none,
                "/process/capabilities/ambient",
                json!([]),
            ),
            (
                Net::None,
                None,
                none,
                "/process/capabilities/inheritable",
                json!([]),
            ),
            (
                Net::None,
                None,
                none,
                "/linux/namespaces",
                ns(&["pid", "mount", "ipc", "uts", "cgroup", "network"]),
            ),
            (
                Net::Host,
                None,
                none,
                "/linux/namespaces",
                ns(&["pid", "mount", "ipc", "uts", "cgroup"]),
            ),
            (
                Net::None,
                Some(RANGE),
                none,
                "/linux/namespaces",
                ns(&["pid", "mount", "ipc", "uts", "cgroup", "network", "user"]),
            ),
            (
                Net::None,
                Some(RANGE),
                none,
                "/linux/uidMappings",
                json!([{"hostID": 524288, "containerID": 0, "size": 65536}]),
            ),
            (
                Net::None,
                Some(RANGE),
                none,
                "/linux/gidMappings",
                json!([{"hostID": 524288, "containerID": 0, "size": 65536}]),
            ),
            (Net::None, None, none, "/linux/uidMappings", Value::Null),
            (
                Net::None,
                None,
                none,
                "/linux/cgroupsPath",
                json!("/tarpool/act.1"),
            ),
            (
                Net::None,
                None,
                none,
                "/linux/resources/memory",
                Value::Null,
            ),
            (
                Net::None,
                None,
                Limits {
                    memory: Some(64 << 20),
                    ..none
                },
                "/linux/resources/memory",
                json!({"limit": 67108864, "swap": 67108864}),
            ),
            (
                Net::None,
                None,
                Limits {
                    pids: Some(32),
                    ..none
                },
                "/linux/resources/pids",
                json!({"limit": 32}),
            ),
            (
                Net::None,
                None,
                Limits {
                    cpus: Some(0.5),
                    ..none
                },
                "/linux/resources/cpu",
                json!({"quota": 50000, "period": 100000}),
            ),
            (
                Net::None,
                None,
                none,
                "/linux/resources/devices",
                json!([{"allow": false, "access": "rwm"}]),
            ),
            (
                Net::None,
                None,
                none,
                "/linux/readonlyPaths/3",
                json!("/proc/sys"),
            ),
            (
                Net::None,
                None,
                none,
                "/linux/maskedPaths/3",
                json!("/proc/kcore"),
            ),
            (
                Net::None,
                None,
                none,
                "/mounts/5",
                json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
            ),
            (
                Net::Host,
                Some(RANGE),
                none,
                "/mounts/5",
                json!({"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}),
            ),
        ];
        for (net, userns, limits, pointer, want) in cases {
            check(net, userns, limits, pointer, want);
        }
    }

    #[test]
    fn capabilities_are_dockers_without_mknod_and_net_raw() {
        let s = spec(Net::None, None, Limits::default()).unwrap();
        let mut got: Vec<String> =
            serde_json::from_value(s["process"]["capabilities"]["bounding"].clone()).unwrap();
        got.sort();
        let mut want = cap_names();
        want.sort();
        assert_eq!(got, want);
        for c in [
            "CAP_SYS_ADMIN",
            "CAP_NET_RAW",
            "CAP_NET_ADMIN",
            "CAP_MKNOD",
            "CAP_SYS_MODULE",
            "CAP_SYS_PTRACE",
        ] {
            assert!(!got.iter().any(|g| g == c), "{c}");
        }
        assert_eq!(got.len(), 12);
    }

    #[test]
    fn bad_limits_are_refused() {
        let none = Limits::default();
        for (limits, want) in [
            (
                Limits {
                    memory: Some(1024),
                    ..none
                },
                "--memory 1024: at least 4 MiB",
            ),
            (
                Limits {
                    pids: Some(0),
                    ..none
                },
                "--pids 0: at least 1",
            ),
            (
                Limits {
                    cpus: Some(0.0),
                    ..none
                },
                "--cpus 0: between 0.01 and 1024",
            ),
            (
                Limits {
                    cpus: Some(f64::NAN),
                    ..none
                },
                "--cpus NaN: between 0.01 and 1024",
            ),
        ] {
            assert_eq!(spec(Net::None, None, limits), Err(want.to_string()));
        }
    }
}
