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

/// Where a run on `device` in `precision` computes: the processor (on CPU from /proc/cpuinfo's
/// model name and the cpuid vendor, family and model) and the path of the frozen matmuls, as
/// `bench` reports it. Provenance for the run record, not part of the spec.
pub fn host(
    device: &Device,
    precision: petnas_core::record::Precision,
) -> petnas_core::record::Host {
    use petnas_core::record::Host;
    if !device.is_cpu() {
        return Host {
            cpu: format!("{:?}", device.location()),
            matmuls: "cuda".into(),
        };
    }
    Host {
        cpu: cpu_name(),
        matmuls: crate::model::fused::matmul_path(precision).into(),
    }
}

/// "model name (vendor family F model M)" from /proc/cpuinfo where it exists, else the cpuid
/// vendor alone.
fn cpu_name() -> String {
    let vendor = petnas_amx::cpu_vendor();
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
            .filter(|v| !v.is_empty())
    };
    match (field("model name"), field("cpu family"), field("model")) {
        (Some(n), Some(f), Some(m)) => format!("{n} ({vendor} family {f} model {m})"),
        (Some(n), _, _) => format!("{n} ({vendor})"),
        _ if !vendor.is_empty() => vendor.to_string(),
        _ => std::env::consts::ARCH.to_string(),
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;
    use petnas_core::record::Precision;

    #[test]
    fn host_names_the_cpu_and_the_matmul_path() {
        let h = host(&Device::Cpu, Precision::Fp32);
        assert_eq!(h.matmuls, "gemm-f32");
        assert!(!h.cpu.is_empty());
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        assert!(h.cpu.contains(petnas_amx::cpu_vendor()), "{}", h.cpu);
        let b = host(&Device::Cpu, Precision::Bf16);
        assert_eq!(b.matmuls, crate::model::fused::bf16_path());
        assert_eq!(b.cpu, h.cpu);
    }
}
