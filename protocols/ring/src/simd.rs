//! Run-time choice of the byte-lane kernels: rejection sampling modulo a small prime
//! ([`crate::Prg::mod_p_into`]) here, and the PrivateCompare arithmetic in 8- and 16-bit lanes
//! of the secure backends (digest §6.9–§6.10).
//!
//! The level follows [`crate::gemm::kernel_level`] (so `KNAPSEC_RING_KERNEL`, which forces
//! the ring kernels, caps these too: `portable` gives the portable copy, `avx2` the AVX2 one)
//! and adds what the byte kernels need beyond it: AVX-512 BW (byte and word lanes of 512-bit
//! vectors), and VBMI (byte permutes) above it. Every level computes the same values
//! as the scalar code; the tests of each kernel run every level this CPU has.

use crate::gemm::{KernelLevel, kernel_level};

/// Which compiled copy of the byte kernels this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ByteLevel {
    /// Portable code, no target features assumed.
    Generic,
    /// The portable code compiled with AVX2 (and explicit AVX2 where written).
    Avx2,
    /// AVX-512 F + BW + VL: 64 byte lanes, mask registers.
    Avx512Bw,
    /// AVX-512 BW with VBMI and GFNI: byte permutes across the whole vector (table lookups
    /// of 128 bytes, rotations of byte lanes) and bit reversal by an affine map.
    Avx512Vbmi,
}

impl ByteLevel {
    /// Whether this level has AVX-512 BW (every level from [`ByteLevel::Avx512Bw`] up).
    pub fn has_avx512bw(self) -> bool {
        self >= ByteLevel::Avx512Bw
    }
}

/// The best byte-kernel level of this CPU (detected once), never above the ring kernels'.
pub fn byte_level() -> ByteLevel {
    static LEVEL: std::sync::OnceLock<ByteLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| level_for(kernel_level()))
}

fn level_for(ring: KernelLevel) -> ByteLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if ring.has_avx512()
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
        {
            return if std::is_x86_feature_detected!("avx512vbmi")
                && std::is_x86_feature_detected!("gfni")
            {
                ByteLevel::Avx512Vbmi
            } else {
                ByteLevel::Avx512Bw
            };
        }
        if matches!(ring, KernelLevel::Avx2) || ring.has_avx512() {
            // AVX-512 without BW still has AVX2.
            if std::is_x86_feature_detected!("avx2") {
                return ByteLevel::Avx2;
            }
        }
    }
    let _ = ring;
    ByteLevel::Generic
}

/// Every level this CPU can run, lowest first (for tests that compare them).
pub fn available_levels() -> Vec<ByteLevel> {
    let best = byte_level();
    [
        ByteLevel::Generic,
        ByteLevel::Avx2,
        ByteLevel::Avx512Bw,
        ByteLevel::Avx512Vbmi,
    ]
    .into_iter()
    .filter(|&l| l <= best)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_include_generic() {
        let levels = available_levels();
        assert_eq!(levels[0], ByteLevel::Generic);
        assert_eq!(*levels.last().expect("one"), byte_level());
        assert!(level_for(KernelLevel::Generic) == ByteLevel::Generic);
    }
}
