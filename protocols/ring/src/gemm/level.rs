//! Which compiled copy of the micro-kernel runs: the best this CPU has (detected once), or the
//! one the environment variable `KNAPSEC_RING_KERNEL` names.
//!
//! `KNAPSEC_RING_KERNEL=portable|avx2|avx512|ifma` forces a kernel, so that one machine checks
//! the paths other CPUs take (CI runs the ring tests under each kernel its CPU has, and under
//! `portable`); `auto` or an empty value is the default. A value that names no kernel, or a
//! kernel this CPU cannot run, is not obeyed: it is reported once on standard error, naming
//! the value and what is missing, and the best kernel this CPU has runs instead. A product
//! has no error to return for an environment variable, and stopping the process over a typo
//! in it would be worse than running the default kernel; [`requested_kernel`] is the checked
//! form for callers that want to refuse instead.

use crate::error::{Result, RingError};

/// The environment variable that forces a kernel (see the module doc).
pub const KERNEL_ENV: &str = "KNAPSEC_RING_KERNEL";

/// Which compiled copy of the micro-kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLevel {
    /// AVX-512 IFMA (with F, DQ, VL): three 52-bit multiply-adds per product.
    Avx512Ifma,
    /// AVX-512 F + DQ (+ VL): `vpmullq` on 512-bit vectors.
    Avx512,
    /// AVX2.
    Avx2,
    /// Whatever the build target allows (plain Rust that LLVM vectorises).
    Generic,
}

impl KernelLevel {
    /// Every level, from the portable kernel up.
    pub const ALL: [KernelLevel; 4] = [
        KernelLevel::Generic,
        KernelLevel::Avx2,
        KernelLevel::Avx512,
        KernelLevel::Avx512Ifma,
    ];

    /// Whether 512-bit integer vectors (AVX-512 F, DQ, VL) are available.
    pub fn has_avx512(self) -> bool {
        matches!(self, KernelLevel::Avx512Ifma | KernelLevel::Avx512)
    }

    /// The level's name as `KNAPSEC_RING_KERNEL` takes it.
    pub fn name(self) -> &'static str {
        match self {
            KernelLevel::Avx512Ifma => "ifma",
            KernelLevel::Avx512 => "avx512",
            KernelLevel::Avx2 => "avx2",
            KernelLevel::Generic => "portable",
        }
    }

    /// The level a name stands for ([`KernelLevel::name`]), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The CPU features the level's kernel needs (x86-64 feature names).
    pub fn features(self) -> &'static [&'static str] {
        match self {
            KernelLevel::Avx512Ifma => &["avx512f", "avx512dq", "avx512vl", "avx512ifma"],
            KernelLevel::Avx512 => &["avx512f", "avx512dq", "avx512vl"],
            KernelLevel::Avx2 => &["avx2"],
            KernelLevel::Generic => &[],
        }
    }

    /// The features of [`KernelLevel::features`] this CPU lacks (all of them off x86-64).
    pub fn missing_features(self) -> Vec<&'static str> {
        self.features()
            .iter()
            .copied()
            .filter(|f| !cpu_has(f))
            .collect()
    }

    /// Whether this CPU can run the level's kernel.
    pub fn is_supported(self) -> bool {
        self.missing_features().is_empty()
    }
}

/// Whether this CPU has the x86-64 feature `feature` (one of those [`KernelLevel::features`]
/// names; never on other architectures).
fn cpu_has(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avx2" => std::is_x86_feature_detected!("avx2"),
            "avx512f" => std::is_x86_feature_detected!("avx512f"),
            "avx512dq" => std::is_x86_feature_detected!("avx512dq"),
            "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
            "avx512ifma" => std::is_x86_feature_detected!("avx512ifma"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// The best kernel this CPU can run (detected once), whatever `KNAPSEC_RING_KERNEL` says.
pub fn detected_kernel_level() -> KernelLevel {
    static LEVEL: std::sync::OnceLock<KernelLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        KernelLevel::ALL
            .into_iter()
            .rev()
            .find(|l| l.is_supported())
            .unwrap_or(KernelLevel::Generic)
    })
}

/// The kernel a value of `KNAPSEC_RING_KERNEL` asks for, checked against `supported` (this
/// CPU: [`KernelLevel::is_supported`]): `Ok(None)` for `auto` or an empty value (the
/// default), an error naming the value and what is wrong for a name that is not a kernel or a
/// kernel `supported` refuses.
pub fn requested_kernel(
    value: &str,
    supported: impl Fn(KernelLevel) -> bool,
) -> Result<Option<KernelLevel>> {
    let value = value.trim();
    if value.is_empty() || value == "auto" {
        return Ok(None);
    }
    let refuse = |reason: String| RingError::KernelRequest {
        value: value.to_string(),
        reason,
    };
    let Some(level) = KernelLevel::from_name(value) else {
        let names: Vec<_> = KernelLevel::ALL.iter().map(|l| l.name()).collect();
        return Err(refuse(format!(
            "not a kernel (expected auto or one of {})",
            names.join(", ")
        )));
    };
    if !supported(level) {
        let reason = if cfg!(target_arch = "x86_64") {
            format!(
                "this CPU cannot run it (it lacks {})",
                level.missing_features().join(", ")
            )
        } else {
            "it needs an x86-64 CPU".to_string()
        };
        return Err(refuse(reason));
    }
    Ok(Some(level))
}

/// The kernel products run: the one `KNAPSEC_RING_KERNEL` forces, when this CPU can run it,
/// else the best this CPU has (decided once; an unusable value is reported on standard
/// error). Only ever a level this CPU supports: the kernels' `unsafe` calls rely on it.
pub fn kernel_level() -> KernelLevel {
    static LEVEL: std::sync::OnceLock<KernelLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = detected_kernel_level();
        let Some(value) = std::env::var_os(KERNEL_ENV) else {
            return detected;
        };
        let value = value.to_string_lossy();
        match requested_kernel(&value, KernelLevel::is_supported) {
            Ok(Some(level)) => level,
            Ok(None) => detected,
            Err(e) => {
                eprintln!(
                    "knapsec-ring: {e}; running the {} kernel instead",
                    detected.name()
                );
                detected
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_is_named_and_found_by_its_name() {
        for level in KernelLevel::ALL {
            assert_eq!(KernelLevel::from_name(level.name()), Some(level));
            let all = |_| true;
            assert_eq!(requested_kernel(level.name(), all).unwrap(), Some(level));
        }
        assert_eq!(requested_kernel("auto", |_| true).unwrap(), None);
        assert_eq!(requested_kernel(" ", |_| true).unwrap(), None);
        // The portable kernel runs everywhere; the detected level is one this CPU has.
        assert!(KernelLevel::Generic.is_supported());
        assert!(detected_kernel_level().is_supported());
    }

    #[test]
    fn a_kernel_that_is_not_one_or_that_the_cpu_lacks_is_refused_by_name() {
        let err = requested_kernel("avx-512", |_| true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"avx-512\"") && err.contains("not a kernel"),
            "{err}"
        );
        assert!(err.contains("portable, avx2, avx512, ifma"), "{err}");
        // A CPU without IFMA (whatever this one has): the request names what is missing.
        let no_ifma = |l| l != KernelLevel::Avx512Ifma;
        let err = requested_kernel("ifma", no_ifma).unwrap_err();
        let RingError::KernelRequest { value, reason } = &err else {
            panic!("wrong error {err:?}");
        };
        assert_eq!(value, "ifma");
        assert!(
            reason.contains("cannot run it") || reason.contains("x86-64"),
            "{reason}"
        );
        // On this CPU: refused exactly when it lacks one of the features.
        for level in KernelLevel::ALL {
            let got = requested_kernel(level.name(), KernelLevel::is_supported);
            assert_eq!(got.is_ok(), level.is_supported(), "{level:?}: {got:?}");
            if let Err(RingError::KernelRequest { reason, .. }) = got {
                #[cfg(target_arch = "x86_64")]
                for f in level.missing_features() {
                    assert!(reason.contains(f), "{reason} should name {f}");
                }
                assert!(!reason.is_empty());
            }
        }
    }

    /// What CI relies on when it runs the tests under each kernel: the kernel the variable
    /// names is the one that runs (or, for one this CPU lacks, the detected best).
    #[test]
    fn the_kernel_forced_by_the_environment_is_the_one_that_runs() {
        let level = kernel_level();
        assert!(level.is_supported());
        let forced = std::env::var(KERNEL_ENV).unwrap_or_default();
        match requested_kernel(&forced, KernelLevel::is_supported) {
            Ok(Some(want)) => assert_eq!(level, want, "{KERNEL_ENV}={forced}"),
            _ => assert_eq!(level, detected_kernel_level(), "{KERNEL_ENV}={forced:?}"),
        }
        eprintln!("ring kernel under test: {}", level.name());
    }
}
