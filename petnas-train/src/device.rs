//! Device selection: `cpu`, or `cuda:N` when built with the `cuda` feature.

use candle_core::Device;

use crate::error::{Result, TrainError};

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = match s.strip_prefix("cuda:") {
                Some(k) => k.parse().map_err(|_| {
                    TrainError::Invalid(format!("device `{s}`: expected cuda:N with N a GPU index"))
                })?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(TrainError::Invalid(format!(
                    "device `{s}`: this petnas-train was built without CUDA (rebuild with `--features cuda`)"
                )));
            }
            Ok(Device::new_cuda(n)?)
        }
        _ => Err(TrainError::Invalid(format!(
            "device `{s}`: expected `cpu` or `cuda:N`"
        ))),
    }
}
