//! The `[thinpool]` configuration, and the parsing of sizes and of the
//! pool's status line.

use serde::Deserialize;

use crate::backend::PoolUsage;

/// The `[thinpool]` table of the configuration.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThinConfig {
    /// The device-mapper name of the pool.
    pub pool: String,
    /// The virtual size of every thin device (each layer's filesystem).
    pub volume_size: String,
    /// `pool init` defaults.
    pub data_size: String,
    pub meta_size: String,
    pub block_size: String,
    /// Free data space, in bytes, below which the kernel warns (`low-water`).
    pub low_water: String,
    /// Zero newly provisioned blocks (slow with large blocks; off by default).
    pub zero_blocks: bool,
    /// Thin ids below this are never touched (for a pool shared with others).
    pub first_dev_id: u32,
}

impl Default for ThinConfig {
    fn default() -> Self {
        ThinConfig {
            pool: "tarpool".into(),
            volume_size: "8G".into(),
            data_size: "20G".into(),
            meta_size: "256M".into(),
            block_size: "64K".into(),
            low_water: "256M".into(),
            zero_blocks: false,
            first_dev_id: 1,
        }
    }
}

/// `640M`, `4G`, `64K`, `512` (bytes); binary units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let unit = t[i..].trim().to_ascii_uppercase();
            let m = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("`{s}`: unknown size unit")),
            };
            (&t[..i], m)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 640M, 4G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses a thin-pool status line (Documentation/admin-guide/device-mapper/thin-provisioning.rst):
/// `<transaction id> <used meta>/<total meta> <used data>/<total data> <held root> <mode> ...`.
pub fn parse_pool_status(line: &str, block_bytes: u64) -> Result<PoolUsage, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.first() == Some(&"Fail") {
        return Err("the pool has failed (`Fail` status)".into());
    }
    let frac = |s: Option<&&str>| -> Result<(u64, u64), String> {
        let s = s.ok_or("short status line")?;
        let (a, b) = s.split_once('/').ok_or("malformed usage")?;
        Ok((
            a.parse().map_err(|_| "malformed usage")?,
            b.parse().map_err(|_| "malformed usage")?,
        ))
    };
    let (meta_used, meta_total) = frac(w.get(1))?;
    let (data_used, data_total) = frac(w.get(2))?;
    Ok(PoolUsage {
        data_used_bytes: data_used * block_bytes,
        data_total_bytes: data_total * block_bytes,
        // Metadata blocks are always 4 KiB.
        meta_used_bytes: meta_used * 4096,
        meta_total_bytes: meta_total * 4096,
        mode: w.get(4).copied().unwrap_or("?").to_string(),
        needs_check: w.contains(&"needs_check"),
    })
}
