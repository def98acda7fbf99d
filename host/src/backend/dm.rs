//! The privileged device-mapper operations the thin-pool backend needs, behind
//! a narrow trait: the real one drives the kernel through the `devicemapper`
//! crate's ioctls (and `mkfs.ext4`, `losetup`); [`RecordingDm`] is a fake for
//! tests on hosts without device-mapper, named as such.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use devicemapper::{DevId, DmError, DmFlags, DmName, DmOptions, DM};

pub trait DmOps: Send + Sync {
    /// Sends a message (`create_thin 7`, `delete 7`, ...) to the pool.
    /// Kernel refusals keep their errno (EEXIST, ENODATA, ENOSPC).
    fn message(&self, pool: &str, msg: &str) -> io::Result<()>;
    /// Creates and resumes device `name` with one target over `sectors`,
    /// and returns a block-device node for it.
    fn create(&self, name: &str, sectors: u64, target: &str, params: &str) -> io::Result<PathBuf>;
    /// The node of an existing, active device, or None.
    fn node(&self, name: &str) -> io::Result<Option<PathBuf>>;
    /// Whether a device of that name exists at all (even with no live
    /// table, as a crash between creating and resuming it leaves it).
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// `major:minor` of an active device, for use in another's table.
    fn devno(&self, name: &str) -> io::Result<Option<String>>;
    /// The device's table line (its first target's parameters).
    fn table(&self, name: &str) -> io::Result<String>;
    /// Removes device `name`, retrying while it is busy. Absent is Ok.
    fn remove(&self, name: &str) -> io::Result<()>;
    fn suspend(&self, name: &str, suspend: bool) -> io::Result<()>;
    /// Names of every device-mapper device on the host.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The status line of the device's first target.
    fn status(&self, name: &str) -> io::Result<String>;
    /// Makes an ext4 filesystem on `node`, writing as little as it can (the
    /// inode tables and journal of a thin device read as zeros unwritten).
    fn mkfs(&self, node: &Path) -> io::Result<()>;
    /// A loop device over `file`: one already attached, or a new one.
    fn loop_device(&self, file: &Path) -> io::Result<PathBuf>;
}

fn dm_err(what: &str, e: DmError) -> io::Error {
    match &e {
        DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => {
            let code = **errno as i32;
            io::Error::new(
                io::Error::from_raw_os_error(code).kind(),
                RawError {
                    code,
                    text: format!("{what}: {}", io::Error::from_raw_os_error(code)),
                },
            )
        }
        _ => io::Error::other(format!("{what}: {e}")),
    }
}

/// An io::Error payload that keeps the kernel's errno.
#[derive(Debug)]
struct RawError {
    code: i32,
    text: String,
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for RawError {}

/// The errno behind an error from [`DmOps`], when the kernel gave one.
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<RawError>())
            .map(|r| r.code)
    })
}

fn name(s: &str) -> io::Result<&DmName> {
    DmName::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{s}: {e}")))
}

/// The kernel's device-mapper. Nodes are made by tarpool itself under
/// `node_dir`, so nothing depends on udev.
pub struct LinuxDm {
    dm: DM,
    node_dir: PathBuf,
}

impl LinuxDm {
    pub fn new(node_dir: &Path) -> io::Result<LinuxDm> {
        let dm = DM::new().map_err(|e| {
            io::Error::other(format!(
                "opening /dev/mapper/control: {e} (is the dm_thin_pool module loaded?)"
            ))
        })?;
        std::fs::create_dir_all(node_dir)?;
        Ok(LinuxDm {
            dm,
            node_dir: node_dir.to_path_buf(),
        })
    }

    fn make_node(&self, name: &str, major: u32, minor: u32) -> io::Result<PathBuf> {
        use rustix::fs::{FileType, Mode};
        let dev = rustix::fs::makedev(major, minor);
        // devtmpfs's node, when it is there and is this device: it works
        // even where the state directory is mounted nodev.
        let kernel = PathBuf::from(format!("/dev/dm-{minor}"));
        if rustix::fs::stat(&kernel).is_ok_and(|st| {
            st.st_rdev == dev && FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice
        }) {
            return Ok(kernel);
        }
        let path = self.node_dir.join(name);
        match rustix::fs::stat(&path) {
            Ok(st)
                if st.st_rdev == dev
                    && FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice =>
            {
                return Ok(path)
            }
            Ok(_) => std::fs::remove_file(&path)?,
            Err(_) => {}
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            FileType::BlockDevice,
            Mode::from_raw_mode(0o600),
            dev,
        )?;
        Ok(path)
    }
}

impl LinuxDm {
    /// The parameters of the device's first target, as `table_status`
    /// reports them with `options` (its status line, or its table line).
    fn first_target(&self, dev: &str, options: DmOptions, what: &str) -> io::Result<String> {
        let (_, targets) = self
            .dm
            .table_status(&DevId::Name(name(dev)?), options)
            .map_err(|e| dm_err(&format!("{what} of {dev}"), e))?;
        targets
            .into_iter()
            .next()
            .map(|t| t.3)
            .ok_or_else(|| io::Error::other(format!("{dev} has no table")))
    }

    /// The device's info, None when there is no such device (ENXIO).
    fn info(&self, dev: &str) -> io::Result<Option<devicemapper::DeviceInfo>> {
        match self.dm.device_info(&DevId::Name(name(dev)?)) {
            Ok(i) => Ok(Some(i)),
            Err(e) => {
                let e = dm_err(&format!("device {dev}"), e);
                if errno(&e) == Some(libc::ENXIO) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }
}

impl DmOps for LinuxDm {
    fn message(&self, pool: &str, msg: &str) -> io::Result<()> {
        self.dm
            .target_msg(&DevId::Name(name(pool)?), None, msg)
            .map(|_| ())
            .map_err(|e| dm_err(&format!("pool {pool}: message `{msg}`"), e))
    }

    fn create(&self, dev: &str, sectors: u64, target: &str, params: &str) -> io::Result<PathBuf> {
        let n = name(dev)?;
        let id = DevId::Name(n);
        if !self.exists(dev)? {
            self.dm
                .device_create(n, None, DmOptions::default())
                .map_err(|e| dm_err(&format!("creating device {dev}"), e))?;
        }
        let table = [(0u64, sectors, target.to_string(), params.to_string())];
        let r = self
            .dm
            .table_load(&id, &table, DmOptions::default())
            .and_then(|_| self.dm.device_suspend(&id, DmOptions::default()));
        match r {
            Ok(info) => {
                let d = info.device();
                self.make_node(dev, d.major, d.minor)
            }
            Err(e) => {
                let err = dm_err(&format!("loading {target} table of {dev}"), e);
                let _ = self.dm.device_remove(&id, DmOptions::default());
                Err(err)
            }
        }
    }

    fn node(&self, dev: &str) -> io::Result<Option<PathBuf>> {
        match self.info(dev)? {
            Some(info) if info.flags().contains(DmFlags::DM_ACTIVE_PRESENT) => {
                let d = info.device();
                self.make_node(dev, d.major, d.minor).map(Some)
            }
            // An inactive table only is not a usable node.
            _ => Ok(None),
        }
    }

    fn exists(&self, dev: &str) -> io::Result<bool> {
        self.info(dev).map(|i| i.is_some())
    }

    fn devno(&self, dev: &str) -> io::Result<Option<String>> {
        Ok(self
            .info(dev)?
            .filter(|i| i.flags().contains(DmFlags::DM_ACTIVE_PRESENT))
            .map(|i| format!("{}:{}", i.device().major, i.device().minor)))
    }

    fn table(&self, dev: &str) -> io::Result<String> {
        self.first_target(
            dev,
            DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            "table",
        )
    }

    fn remove(&self, dev: &str) -> io::Result<()> {
        let id = DevId::Name(name(dev)?);
        if !self.exists(dev)? {
            let _ = std::fs::remove_file(self.node_dir.join(dev));
            return Ok(());
        }
        // The crate retries EBUSY itself; a few more rounds cover a
        // filesystem still letting go of the device after an unmount.
        let mut last = None;
        for attempt in 0..5 {
            match self.dm.device_remove(&id, DmOptions::default()) {
                Ok(_) => {
                    let _ = std::fs::remove_file(self.node_dir.join(dev));
                    return Ok(());
                }
                Err(e) => {
                    let e = dm_err(&format!("removing device {dev}"), e);
                    if errno(&e) == Some(libc::ENXIO) {
                        return Ok(());
                    }
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(100 << attempt));
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("removing a device failed")))
    }

    fn suspend(&self, dev: &str, suspend: bool) -> io::Result<()> {
        let flags = if suspend {
            DmFlags::DM_SUSPEND
        } else {
            DmFlags::empty()
        };
        self.dm
            .device_suspend(
                &DevId::Name(name(dev)?),
                DmOptions::default().set_flags(flags),
            )
            .map(|_| ())
            .map_err(|e| dm_err(&format!("suspending/resuming {dev}"), e))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .dm
            .list_devices()
            .map_err(|e| dm_err("listing devices", e))?
            .into_iter()
            .map(|(n, _, _)| n.to_string())
            .collect())
    }

    fn status(&self, dev: &str) -> io::Result<String> {
        self.first_target(dev, DmOptions::default(), "status")
    }

    fn mkfs(&self, node: &Path) -> io::Result<()> {
        let out = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            ])
            .arg(node)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mkfs.ext4 {}: {}",
                node.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn loop_device(&self, file: &Path) -> io::Result<PathBuf> {
        let out = Command::new("losetup").arg("-j").arg(file).output()?;
        if let Some(dev) = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.split(':').next())
            .filter(|d| !d.is_empty())
        {
            return Ok(PathBuf::from(dev));
        }
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "losetup {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

/// A fake device-mapper that keeps a model of the pool in memory and records
/// every call: for tests on hosts without device-mapper (this one). It
/// answers as the kernel does where tarpool depends on it: EEXIST for a
/// thin id that exists, ENODATA for deleting one that does not.
#[derive(Default)]
pub struct RecordingDm {
    pub calls: Mutex<Vec<String>>,
    pub state: Mutex<FakePool>,
}

#[derive(Default, Debug)]
pub struct FakePool {
    /// Thin ids in the pool, with their origin.
    pub thins: BTreeMap<u32, Option<u32>>,
    /// Active devices and their table parameters.
    pub devices: BTreeMap<String, String>,
    pub dir: Option<PathBuf>,
    /// A status line to report instead of the computed one.
    pub status: Option<String>,
    /// Devices whose removal fails with EBUSY (mounted elsewhere).
    pub busy: std::collections::BTreeSet<String>,
}

impl RecordingDm {
    pub fn with_pool(pool: &str, dir: &Path) -> RecordingDm {
        let r = RecordingDm::default();
        {
            let mut s = r.state.lock().unwrap();
            s.devices.insert(pool.to_string(), "thin-pool".into());
            s.dir = Some(dir.to_path_buf());
        }
        r
    }

    fn log(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }

    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

fn os(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl DmOps for RecordingDm {
    fn message(&self, pool: &str, msg: &str) -> io::Result<()> {
        self.log(format!("message {pool} {msg}"));
        let mut s = self.state.lock().unwrap();
        let words: Vec<&str> = msg.split(' ').collect();
        let num = |i: usize| -> io::Result<u32> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| os(libc::EINVAL))
        };
        match words[0] {
            "create_thin" => {
                let id = num(1)?;
                if s.thins.contains_key(&id) {
                    return Err(os(libc::EEXIST));
                }
                s.thins.insert(id, None);
            }
            "create_snap" => {
                let (id, origin) = (num(1)?, num(2)?);
                if s.thins.contains_key(&id) {
                    return Err(os(libc::EEXIST));
                }
                if !s.thins.contains_key(&origin) {
                    return Err(os(libc::ENODATA));
                }
                s.thins.insert(id, Some(origin));
            }
            "delete" => {
                let id = num(1)?;
                if s.thins.remove(&id).is_none() {
                    return Err(os(libc::ENODATA));
                }
            }
            _ => return Err(os(libc::EINVAL)),
        }
        Ok(())
    }

    fn create(&self, name: &str, sectors: u64, target: &str, params: &str) -> io::Result<PathBuf> {
        self.log(format!("create {name} {sectors} {target} {params}"));
        let mut s = self.state.lock().unwrap();
        if target == "thin" {
            let id: u32 = params
                .rsplit(' ')
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| os(libc::EINVAL))?;
            if !s.thins.contains_key(&id) {
                return Err(os(libc::ENODATA));
            }
        }
        s.devices.insert(name.to_string(), params.to_string());
        let dir = s.dir.clone().unwrap_or_else(std::env::temp_dir);
        Ok(dir.join(name))
    }

    fn node(&self, name: &str) -> io::Result<Option<PathBuf>> {
        let s = self.state.lock().unwrap();
        let dir = s.dir.clone().unwrap_or_else(std::env::temp_dir);
        Ok(s.devices.contains_key(name).then(|| dir.join(name)))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.state.lock().unwrap().devices.contains_key(name))
    }

    fn devno(&self, name: &str) -> io::Result<Option<String>> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .devices
            .contains_key(name)
            .then(|| format!("dev:{name}")))
    }

    fn table(&self, _name: &str) -> io::Result<String> {
        Ok("7:1 7:0 256 4096 1 skip_block_zeroing".into())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.log(format!("remove {name}"));
        let mut s = self.state.lock().unwrap();
        if s.busy.contains(name) {
            return Err(os(libc::EBUSY));
        }
        s.devices.remove(name);
        Ok(())
    }

    fn suspend(&self, name: &str, suspend: bool) -> io::Result<()> {
        self.log(format!(
            "{} {name}",
            if suspend { "suspend" } else { "resume" }
        ));
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.lock().unwrap().devices.keys().cloned().collect())
    }

    fn status(&self, _name: &str) -> io::Result<String> {
        let s = self.state.lock().unwrap();
        if let Some(line) = &s.status {
            return Ok(line.clone());
        }
        let used = s.thins.len();
        Ok(format!(
            "1 10/1000 {}/10000 - rw discard_passdown error_if_no_space - 1024",
            used * 10
        ))
    }

    fn mkfs(&self, node: &Path) -> io::Result<()> {
        self.log(format!("mkfs {}", node.display()));
        Ok(())
    }

    fn loop_device(&self, file: &Path) -> io::Result<PathBuf> {
        self.log(format!("loop {}", file.display()));
        Ok(PathBuf::from("/dev/loop-fake"))
    }
}
