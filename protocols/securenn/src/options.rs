//! Backend options (RON): which DReLU the network uses and what the client learns.
//!
//! ```text
//! (drelu: Exact, reveal: Logits)
//! (drelu: Approx(bits: 16, lsb_ignored: 0), reveal: Label)
//! (drelu: Calibrated)
//! ```
//! Both fields are optional (defaults: `Exact`, `Logits`). The canonical form is the compact
//! RON of the parsed options with both fields written out.

use crate::error::{Result, SecureNnError};
use knapsec_core::drelu::{DreluChoice, DreluWindow};
use serde::{Deserialize, Serialize};

/// How every DReLU of the network is computed (digest §6.12).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DreluMode {
    /// The exact sign of the 64-bit value.
    #[default]
    Exact,
    /// The sign of the `bits`-bit two's-complement window `[t, t + bits)` of the value (of the
    /// patch mean, for block ReLUs), `t = lsb_ignored`; `bits − 1` bits are compared. See
    /// [`crate::select`] for the exact range where the result is correct.
    Approx {
        /// Window bits `k`, sign included.
        bits: u32,
        /// Ignored low bits `t`.
        lsb_ignored: u32,
    },
    /// Each DReLU site with the window calibrated into the secure model's public part
    /// (`knapsec calibrate`; [`knapsec_core::drelu::Calibration`]); sites without one are exact.
    Calibrated,
}

impl From<DreluWindow> for DreluMode {
    fn from(w: DreluWindow) -> Self {
        if w.is_exact() {
            DreluMode::Exact
        } else {
            DreluMode::Approx {
                bits: w.bits,
                lsb_ignored: w.lsb_ignored,
            }
        }
    }
}

impl DreluMode {
    /// Window bits `k` (sign included) and ignored low bits `t`; `Calibrated` has one per
    /// site (see [`DreluMode::choice`]) and answers the exact window here.
    pub fn window(&self) -> (u32, u32) {
        match *self {
            DreluMode::Exact | DreluMode::Calibrated => (64, 0),
            DreluMode::Approx { bits, lsb_ignored } => (bits, lsb_ignored),
        }
    }

    /// The one window of a uniform mode; `None` for `Calibrated`.
    pub fn uniform_window(&self) -> Option<DreluWindow> {
        match *self {
            DreluMode::Calibrated => None,
            _ => {
                let (bits, lsb_ignored) = self.window();
                Some(DreluWindow { bits, lsb_ignored })
            }
        }
    }

    /// The same choice in the terms of `knapsec-core` (shared with the plain oracle).
    pub fn choice(&self) -> DreluChoice {
        match *self {
            DreluMode::Exact => DreluChoice::Exact,
            DreluMode::Calibrated => DreluChoice::Calibrated,
            DreluMode::Approx { bits, lsb_ignored } => {
                DreluChoice::Uniform(DreluWindow { bits, lsb_ignored })
            }
        }
    }

    /// Checks `2 ≤ bits ≤ 64` and `bits + lsb_ignored ≤ 64`.
    pub fn validate(&self) -> Result<()> {
        let (k, t) = self.window();
        if !(2..=64).contains(&k) || k + t > 64 {
            return Err(SecureNnError::Options(format!(
                "approximate DReLU needs 2 <= bits <= 64 and bits + lsb_ignored <= 64 (got bits {k}, lsb_ignored {t})"
            )));
        }
        Ok(())
    }

    /// Parses the CLI form: `exact`, `approx:K,T` (`approx:K` means `T = 0`) or `calibrated`.
    pub fn parse_cli(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("exact") {
            return Ok(DreluMode::Exact);
        }
        if t.eq_ignore_ascii_case("calibrated") {
            return Ok(DreluMode::Calibrated);
        }
        let bad = || {
            SecureNnError::Options(format!(
                "cannot parse DReLU mode {text:?}: expected `exact`, `approx:BITS[,LSB_IGNORED]` or `calibrated`"
            ))
        };
        let rest = t.strip_prefix("approx:").ok_or_else(bad)?;
        let mut parts = rest.split(',');
        let bits: u32 = parts
            .next()
            .ok_or_else(bad)?
            .trim()
            .parse()
            .map_err(|_| bad())?;
        let lsb_ignored: u32 = match parts.next() {
            Some(p) => p.trim().parse().map_err(|_| bad())?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        let m = DreluMode::Approx { bits, lsb_ignored };
        m.validate()?;
        Ok(m)
    }
}

/// What the client learns at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reveal {
    /// The output logits.
    #[default]
    Logits,
    /// Only the label (classification) or label map (segmentation), by a secure argmax.
    Label,
}

/// Options of the `securenn` backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// How DReLUs are computed.
    pub drelu: DreluMode,
    /// What the client learns.
    pub reveal: Reveal,
}

impl Options {
    /// Parses RON text (empty text = defaults) and validates it.
    pub fn parse(text: &str) -> Result<Self> {
        let o: Options = if text.trim().is_empty() {
            Options::default()
        } else {
            ron::from_str(text).map_err(|e| SecureNnError::Options(format!("{e} in {text:?}")))?
        };
        o.drelu.validate()?;
        Ok(o)
    }

    /// The canonical RON text.
    pub fn canonical(&self) -> String {
        ron::to_string(self).expect("options always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_canonical_round_trip() {
        let o = Options::parse("(drelu: Approx(bits: 16, lsb_ignored: 3), reveal: Label)").unwrap();
        assert_eq!(
            o.drelu,
            DreluMode::Approx {
                bits: 16,
                lsb_ignored: 3
            }
        );
        assert_eq!(o.reveal, Reveal::Label);
        assert_eq!(Options::parse(&o.canonical()).unwrap(), o);
        assert_eq!(Options::parse("").unwrap(), Options::default());
        assert_eq!(
            Options::parse("()").unwrap().canonical(),
            "(drelu:Exact,reveal:Logits)"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(Options::parse("(drelu: Approx(bits: 1, lsb_ignored: 0))").is_err());
        assert!(Options::parse("(drelu: Approx(bits: 60, lsb_ignored: 5))").is_err());
        assert!(Options::parse("(bogus: 1)").is_err());
        assert!(DreluMode::parse_cli("approx:16,x").is_err());
        assert_eq!(
            DreluMode::parse_cli("approx:16,2").unwrap(),
            DreluMode::Approx {
                bits: 16,
                lsb_ignored: 2
            }
        );
        assert_eq!(
            DreluMode::parse_cli("approx:20").unwrap(),
            DreluMode::Approx {
                bits: 20,
                lsb_ignored: 0
            }
        );
        assert_eq!(DreluMode::parse_cli("exact").unwrap(), DreluMode::Exact);
        assert_eq!(
            DreluMode::parse_cli("calibrated").unwrap(),
            DreluMode::Calibrated
        );
        assert_eq!(
            Options::parse("(drelu: Calibrated)").unwrap().drelu,
            DreluMode::Calibrated
        );
    }
}
