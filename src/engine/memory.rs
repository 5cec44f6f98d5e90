//! Memory a model or a batch asks for, checked before anything is allocated: every estimate is
//! computed with checked arithmetic from the configuration (a 600-byte config.json can claim
//! `hidden_size = 2^31`), and compared with the limit: `SSMLAB_MAX_MEMORY` (`--max-memory`
//! sets it) or else the machine's memory (the smaller of `MemTotal` and the cgroup's
//! `memory.max`). The estimates are lower bounds (weights, gradients and optimiser moments,
//! the activations a step keeps, SSM kernels): a config that fails them cannot run here.

use crate::engine::{EngineError, Result};

/// The environment variable of the limit (`--max-memory` sets it for the process and its
/// children).
pub const LIMIT_ENV: &str = "SSMLAB_MAX_MEMORY";

/// Parses a size: bytes, or a number with `K`, `M`, `G` or `T` (powers of 1024; `KiB`,
/// `KB`, `GiB`… and lower case are the same).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write e.g. 8G, 512M or 1073741824"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("`{s}`: unknown unit `{u}`; use K, M, G or T")),
    };
    let b = v * mult;
    if !(b.is_finite() && b >= 1.0 && b < u64::MAX as f64) {
        return Err(format!("`{s}` is not a usable memory size"));
    }
    Ok(b as u64)
}

fn meminfo_total() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

fn cgroup_max() -> Option<u64> {
    let s = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    s.trim().parse().ok()
}

/// The limit estimates are checked against, and where it comes from.
pub fn limit() -> Result<(u64, &'static str)> {
    if let Some(v) = std::env::var_os(LIMIT_ENV) {
        let v = v.to_string_lossy();
        let b = parse_size(&v).map_err(|e| EngineError::Input(format!("{LIMIT_ENV}: {e}")))?;
        return Ok((b, "the --max-memory / SSMLAB_MAX_MEMORY limit"));
    }
    let machine = match (meminfo_total(), cgroup_max()) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        // No way to tell: only the arithmetic is checked.
        (None, None) => u64::MAX,
    };
    Ok((machine, "this machine's memory"))
}

/// Bytes as `12.3 GiB`.
pub fn human(b: u64) -> String {
    let g = b as f64 / (1u64 << 30) as f64;
    if g >= 1.0 {
        format!("{g:.1} GiB")
    } else {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// A sum of products of configuration values, in bytes; `None` once anything overflows.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub Option<u64>);

impl Bytes {
    pub const ZERO: Bytes = Bytes(Some(0));
    /// `4 · Π factors` bytes (f32 values).
    pub fn f32s(factors: &[usize]) -> Bytes {
        let mut n = Some(4u64);
        for &f in factors {
            n = n.and_then(|n| n.checked_mul(f as u64));
        }
        Bytes(n)
    }
    pub fn plus(self, o: Bytes) -> Bytes {
        Bytes(self.0.and_then(|a| o.0.and_then(|b| a.checked_add(b))))
    }
    pub fn times(self, k: usize) -> Bytes {
        Bytes(self.0.and_then(|a| a.checked_mul(k as u64)))
    }
}

/// Refuses `need` (for `what`, made of `fields`: `name = value` pairs) when it overflows or
/// exceeds the limit.
pub fn check(what: &str, need: Bytes, fields: &[(&str, usize)]) -> Result<()> {
    let (limit, origin) = limit()?;
    let named = fields
        .iter()
        .map(|(f, v)| format!("{f} = {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    match need.0 {
        None => Err(EngineError::Input(format!(
            "{what} is too large to represent ({named}): its size overflows 64 bits; check \
             these fields"
        ))),
        Some(b) if b > limit => Err(EngineError::Input(format!(
            "{what} needs at least {} ({named}) but {origin} is {}; make these smaller \
             (or raise the limit with --max-memory)",
            human(b),
            human(limit)
        ))),
        Some(_) => Ok(()),
    }
}
