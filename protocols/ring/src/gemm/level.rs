//! Which compiled copy of the micro-kernel runs: detected once from the CPU's features.

/// Which compiled copy of the micro-kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLevel {
    /// AVX-512 IFMA (with F, DQ, VL): three 52-bit multiply-adds per product.
    Avx512Ifma,
    /// AVX-512 F + DQ (+ VL): `vpmullq` on 512-bit vectors.
    Avx512,
    /// AVX2.
    Avx2,
    /// Whatever the build target allows.
    Generic,
}

impl KernelLevel {
    /// Whether 512-bit integer vectors (AVX-512 F, DQ, VL) are available.
    pub fn has_avx512(self) -> bool {
        matches!(self, KernelLevel::Avx512Ifma | KernelLevel::Avx512)
    }
}

/// The best kernel for this CPU (detected once).
pub fn kernel_level() -> KernelLevel {
    static LEVEL: std::sync::OnceLock<KernelLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
            {
                if std::is_x86_feature_detected!("avx512ifma") {
                    return KernelLevel::Avx512Ifma;
                }
                return KernelLevel::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") {
                return KernelLevel::Avx2;
            }
        }
        KernelLevel::Generic
    })
}
