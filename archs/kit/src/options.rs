//! The option checks every built-in plan makes (DESIGN §3: bad input gets a clear error naming
//! the architecture and the option).

use knapsec_core::graph::window_out;
use knapsec_core::{CoreError, Result};

/// The error for option `option` of architecture `arch`: `architecture "A": option O WHY`.
pub fn invalid(arch: &str, option: &str, why: impl std::fmt::Display) -> CoreError {
    CoreError::Invalid(format!("architecture {arch:?}: option {option} {why}"))
}

/// Option `option`'s value, `default` when absent; zero is refused.
pub fn positive(arch: &str, option: &str, v: Option<u32>, default: u32) -> Result<u32> {
    match v {
        Some(0) => Err(invalid(arch, option, "must be at least 1")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

/// Map size after a `k × k` window with stride `s`, padding `p` and dilation `d` on a map of
/// `hw`; an error naming the input size when the window does not fit.
pub fn out_hw(arch: &str, hw: (u32, u32), k: u32, s: u32, p: u32, d: u32) -> Result<(u32, u32)> {
    match (window_out(hw.0, k, s, p, d), window_out(hw.1, k, s, p, d)) {
        (Some(h), Some(w)) => Ok((h, w)),
        _ => Err(invalid(
            arch,
            "input_height/input_width",
            format!("{}x{} is too small for this network", hw.0, hw.1),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_architecture_and_option() {
        assert_eq!(positive("a", "classes", None, 7).unwrap(), 7);
        assert_eq!(positive("a", "classes", Some(3), 7).unwrap(), 3);
        let e = positive("a", "classes", Some(0), 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"a\"") && e.contains("classes"), "{e}");
        assert_eq!(out_hw("a", (32, 30), 3, 2, 1, 1).unwrap(), (16, 15));
        assert_eq!(out_hw("a", (9, 9), 3, 1, 2, 2).unwrap(), (9, 9));
        let e = out_hw("a", (1, 1), 7, 1, 0, 1).unwrap_err().to_string();
        assert!(e.contains("1x1 is too small"), "{e}");
    }
}
