//! Devices by name, as `--device` and `SSMLAB_TEST_DEVICE` give them.

use candle_core::Device;

use super::Result;

/// Parse `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let bad = || super::EngineError::Input(format!("--device {s}: expected cpu, cuda or cuda:N"));
    Ok(match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        _ => {
            let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
            Device::new_cuda(n.parse().map_err(|_| bad())?)?
        }
    })
}
