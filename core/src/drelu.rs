//! Approximate DReLU windows and their calibration (digest §6.12, DESIGN §5).
//!
//! A secure DReLU compares a window of the value's bits instead of all 64: `k` bits (sign
//! included) above `t` ignored low bits. This module holds what every party, the plaintext
//! oracle and the calibration share:
//!
//! * [`DreluWindow`]: one `(k, t)` pair, how it applies to a patch sum ([`DreluWindow::shift`])
//!   and the exact decision a SecureNN-style comparison computes for a compared value `a` and
//!   the helper's mask `x` ([`DreluWindow::decide`]): the sign bit of
//!   `(a >> t') + c` read as an `(n+1)`-bit two's-complement number, `n = k − 1`, where `c` is
//!   the carry of the ignored low bits of `a + x`. So the result is the true sign of `a` for
//!   `a ∈ [−W + T, −T] ∪ [0, W − T]` (`W = 2^(t'+n)`, `T = 2^t'`), depends on the mask for
//!   `−T < a < 0` (it is 1 with probability `(T − |a|)/T`), and wraps periodically outside
//!   `[−W, W)`.
//! * [`SiteStats`]: what calibration observes at one DReLU site: how many values were
//!   compared, the largest magnitude of the compared value per unit of patch (the *mean*
//!   scale the window is applied at), and a histogram of the negative values near zero.
//! * [`choose_window`]: the fewest compared bits `k` and the most ignored bits `t` that cover
//!   the observed range with a safety margin and keep the values at risk from ignored bits
//!   under a target fraction.
//! * [`Calibration`] / [`SiteCalibration`]: the choice, stored in the secure model's public
//!   part so that the parties' handshake covers it; [`SiteCalibration::check`] is the guard
//!   rail that says when a window is too narrow for what calibration saw.

use crate::error::{CoreError, Result};
use crate::graph::SecureModel;
use serde::{Deserialize, Serialize};

/// `⌈log₂ x⌉` (0 for `x ≤ 1`): the extra ignored bits of a patch sum of `x` pixels.
pub fn ceil_log2(x: usize) -> u32 {
    if x <= 1 {
        0
    } else {
        usize::BITS - (x - 1).leading_zeros()
    }
}

/// Number of bits of `v` (0 for 0).
fn bit_len(v: u64) -> u32 {
    u64::BITS - v.leading_zeros()
}

/// One comparison window: `bits` = `k` (sign bit included, `k − 1` bits compared) above
/// `lsb_ignored` = `t` ignored low bits. `(64, 0)` is the exact DReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DreluWindow {
    /// Window bits `k`, sign included (`k − 1` bits are compared).
    pub bits: u32,
    /// Ignored low bits `t` (of a single value; a patch sum ignores `⌈log₂ area⌉` more).
    pub lsb_ignored: u32,
}

impl DreluWindow {
    /// The exact DReLU (all 64 bits).
    pub const EXACT: DreluWindow = DreluWindow {
        bits: 64,
        lsb_ignored: 0,
    };

    /// Checks `2 ≤ bits ≤ 64` and `bits + lsb_ignored ≤ 64`.
    pub fn validate(&self) -> Result<()> {
        let (k, t) = (self.bits, self.lsb_ignored);
        if !(2..=64).contains(&k) || k + t > 64 {
            return Err(CoreError::Invalid(format!(
                "DReLU window needs 2 <= bits <= 64 and bits + lsb_ignored <= 64 (got bits {k}, lsb_ignored {t})"
            )));
        }
        Ok(())
    }

    /// True for the exact window `(64, 0)`.
    pub fn is_exact(&self) -> bool {
        *self == Self::EXACT
    }

    /// Compared bits `n = k − 1`.
    pub fn compared_bits(&self) -> u32 {
        self.bits - 1
    }

    /// Ignored low bits `t'` of a compared value that sums `area` pixels: `t` for one pixel,
    /// `min(t + ⌈log₂ area⌉, 64 − k)` for a patch sum (so the window applies to the patch
    /// mean, as in the reference). The exact window ignores nothing.
    pub fn shift(&self, area: usize) -> u32 {
        if self.is_exact() {
            0
        } else {
            (self.lsb_ignored + ceil_log2(area)).min(64 - self.bits)
        }
    }

    /// The decision `[a ≥ 0]` as the secure comparison computes it, given the mask `x` the
    /// helper added (only its bits up to the window's top matter): the sign bit of
    /// `z − x` over the window, `z = a + x`, with the low `t'` bits of both dropped.
    pub fn decide(&self, a: u64, area: usize, x: u64) -> bool {
        let t = self.shift(area);
        let n = self.compared_bits();
        let z = a.wrapping_add(x);
        let low = (1u64 << n) - 1;
        let zj = (z >> (t + n)) & 1;
        let xj = (x >> (t + n)) & 1;
        let borrow = u64::from(((x >> t) & low) > ((z >> t) & low));
        (zj ^ xj ^ borrow) == 0
    }

    /// The decision for a carry `c` out of the ignored low bits: the sign bit of
    /// `(a >> t') + c` as an `(n+1)`-bit number. [`Self::decide`] equals this with
    /// `c = [(a mod 2^t') + (x mod 2^t') ≥ 2^t']`.
    pub fn decide_with_carry(&self, a: u64, area: usize, carry: bool) -> bool {
        let t = self.shift(area);
        let n = self.compared_bits();
        let q = (a >> t).wrapping_add(u64::from(carry));
        (q >> n) & 1 == 0
    }

    /// The decision when it does not depend on the mask, `None` when it does (the low
    /// `t'` bits of `a` are not all zero and a carry would flip the window's sign bit).
    pub fn decide_known(&self, a: u64, area: usize) -> Option<bool> {
        let t = self.shift(area);
        let d0 = self.decide_with_carry(a, area, false);
        if t == 0 || a & ((1u64 << t) - 1) == 0 {
            return Some(d0);
        }
        let d1 = self.decide_with_carry(a, area, true);
        (d0 == d1).then_some(d0)
    }

    /// The largest magnitude per unit of patch (`⌈|a| / 2^⌈log₂ area⌉⌉`) this window decides
    /// correctly: `2^(t+n) − 2^t`.
    pub fn max_covered(&self) -> u64 {
        if self.is_exact() {
            return u64::MAX;
        }
        let (t, n) = (self.lsb_ignored, self.compared_bits());
        if t + n >= 64 {
            return u64::MAX;
        }
        (1u64 << (t + n)) - (1u64 << t)
    }

    /// Parses `exact` or `approx:K[,T]`.
    pub fn parse(text: &str) -> Result<Self> {
        let s = text.trim();
        if s.eq_ignore_ascii_case("exact") {
            return Ok(Self::EXACT);
        }
        let bad = || {
            CoreError::Invalid(format!(
                "cannot parse DReLU window {text:?}: expected `exact` or `approx:BITS[,LSB_IGNORED]`"
            ))
        };
        let rest = s.strip_prefix("approx:").ok_or_else(bad)?;
        let mut parts = rest.split(',');
        let bits = parts
            .next()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(bad)?;
        let lsb_ignored = match parts.next() {
            Some(p) => p.trim().parse().map_err(|_| bad())?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        let w = DreluWindow { bits, lsb_ignored };
        w.validate()?;
        Ok(w)
    }
}

impl std::fmt::Display for DreluWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_exact() {
            f.write_str("exact")
        } else {
            write!(f, "approx:{},{}", self.bits, self.lsb_ignored)
        }
    }
}

/// What kind of op a DReLU site is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteKind {
    /// A (block) ReLU layer: one comparison of `patch sum − 1` per patch.
    BlockRelu,
    /// ReLU6: comparisons of `x` and of `x − 6` per pixel.
    Relu6,
    /// Max pooling: comparisons `a − b` of a tree over the window's taps.
    MaxPool,
}

impl std::fmt::Display for SiteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SiteKind::BlockRelu => "relu",
            SiteKind::Relu6 => "relu6",
            SiteKind::MaxPool => "maxpool",
        })
    }
}

/// Buckets of [`SiteStats::negative_near_zero`]: bit lengths 0..=64.
pub const NEAR_ZERO_BUCKETS: usize = 65;

/// The distribution of the compared values at one DReLU site over some inputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteStats {
    /// Values compared.
    pub count: u64,
    /// Largest `⌈|a| / 2^⌈log₂ area⌉⌉` (the magnitude at the patch-mean scale, in ulps).
    pub max_abs: u64,
    /// `negative_near_zero[b]`: negative values whose scaled magnitude `|a| >> ⌈log₂ area⌉`
    /// has `b` bits; with `t` ignored bits the values of buckets `0..=t` lie in the band
    /// `−2^t' < a < 0` whose sign depends on the mask. Trailing zero buckets are dropped.
    pub negative_near_zero: Vec<u64>,
}

impl Default for SiteStats {
    fn default() -> Self {
        SiteStats {
            count: 0,
            max_abs: 0,
            negative_near_zero: vec![0; NEAR_ZERO_BUCKETS],
        }
    }
}

impl SiteStats {
    /// Records one compared value `a` (a two's-complement ring element) summing `area` pixels.
    #[inline]
    pub fn observe(&mut self, a: u64, area: usize) {
        let s = ceil_log2(area);
        let v = a as i64;
        let mag = v.unsigned_abs();
        let scaled = mag.div_ceil(1u64 << s);
        self.count += 1;
        self.max_abs = self.max_abs.max(scaled);
        if v < 0 {
            if self.negative_near_zero.len() < NEAR_ZERO_BUCKETS {
                self.negative_near_zero.resize(NEAR_ZERO_BUCKETS, 0);
            }
            self.negative_near_zero[bit_len(mag >> s) as usize] += 1;
        }
    }

    /// Adds another site's observations.
    pub fn merge(&mut self, other: &SiteStats) {
        self.count += other.count;
        self.max_abs = self.max_abs.max(other.max_abs);
        if self.negative_near_zero.len() < other.negative_near_zero.len() {
            self.negative_near_zero
                .resize(other.negative_near_zero.len(), 0);
        }
        for (a, b) in self
            .negative_near_zero
            .iter_mut()
            .zip(&other.negative_near_zero)
        {
            *a += b;
        }
    }

    /// Negative values whose sign may be lost with `t` ignored bits (the band `−2^t' < a < 0`).
    pub fn at_risk(&self, t: u32) -> u64 {
        self.negative_near_zero.iter().take(t as usize + 1).sum()
    }

    /// The same statistics without trailing empty histogram buckets (what is stored).
    pub fn trimmed(mut self) -> Self {
        while self.negative_near_zero.last() == Some(&0) {
            self.negative_near_zero.pop();
        }
        self
    }
}

/// How [`choose_window`] chooses.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationTarget {
    /// The window covers the observed largest magnitude times `2^margin_bits`.
    pub margin_bits: u32,
    /// At most this fraction of a site's compared values may sit in the band whose sign the
    /// ignored bits decide.
    pub target_error: f64,
    /// No site gets more than this many window bits `k` (a cap may make a window too narrow:
    /// [`SiteCalibration::check`] says so).
    pub max_bits: u32,
}

impl Default for CalibrationTarget {
    fn default() -> Self {
        CalibrationTarget {
            margin_bits: 2,
            target_error: 1e-2,
            max_bits: 64,
        }
    }
}

/// The window for `stats`: the largest `t` whose at-risk fraction is within the target, then
/// the fewest `k` whose window holds `max_abs · 2^margin_bits` (see the module docs).
pub fn choose_window(stats: &SiteStats, target: &CalibrationTarget) -> DreluWindow {
    if stats.count == 0 {
        return DreluWindow::EXACT;
    }
    let allowed = (target.target_error.max(0.0) * stats.count as f64).floor() as u64;
    // The band of t ignored bits is empty of observations when no negative value is that
    // close to 0; ignoring bits never helps beyond the magnitude's own bits.
    let need = bit_len(stats.max_abs.max(1)) + target.margin_bits;
    let mut t = 0;
    while t + 1 < need.min(62) && stats.at_risk(t + 1) <= allowed {
        t += 1;
    }
    if t == 0 && stats.at_risk(0) > allowed {
        // Even t = 0 leaves values at risk only for patches (t' = ⌈log₂ area⌉ > 0), where
        // the exact comparison of the sum is the only cure.
        return DreluWindow::EXACT;
    }
    // Smallest n with 2^(t+n) − 2^t ≥ max_abs · 2^margin: n = need − t (+1 if equal edge).
    let goal = (u128::from(stats.max_abs) << target.margin_bits).max(1);
    let mut n = need.saturating_sub(t).max(1);
    while n + t < 64 && ((1u128 << (t + n)) - (1u128 << t)) < goal {
        n += 1;
    }
    let bits = (n + 1).min(target.max_bits.clamp(2, 64));
    if bits + t > 64 || bits == 64 {
        return DreluWindow::EXACT;
    }
    DreluWindow {
        bits,
        lsb_ignored: t,
    }
}

/// One DReLU site's calibrated window and the observations it was chosen from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteCalibration {
    /// Index of the node in the graph.
    pub node: u32,
    /// The node's name (checked against the graph).
    pub name: String,
    /// What kind of op the site is.
    pub kind: SiteKind,
    /// The chosen window.
    pub window: DreluWindow,
    /// What calibration observed at the site.
    pub stats: SiteStats,
}

/// A site whose window the calibration data show to be too narrow (or too coarse).
#[derive(Clone, Debug, PartialEq)]
pub struct WindowWarning {
    /// Index of the site's node.
    pub node: u32,
    /// The site's node name.
    pub name: String,
    /// The window checked.
    pub window: DreluWindow,
    /// Largest observed magnitude (patch-mean scale, ulps) and what the window covers.
    pub observed: u64,
    /// The largest magnitude the window decides correctly (same scale).
    pub covered: u64,
    /// Observed values in the band the ignored bits decide, and their fraction.
    pub at_risk: u64,
    /// `at_risk` as a fraction of the observed values.
    pub at_risk_fraction: f64,
    /// True when the window does not cover the observed range (values would wrap).
    pub too_narrow: bool,
}

impl WindowWarning {
    /// One line naming the site, the window and the observed range (in real units at
    /// `frac_bits`).
    pub fn describe(&self, frac_bits: u32) -> String {
        let scale = (1u64 << frac_bits) as f64;
        if self.too_narrow {
            format!(
                "DReLU site {} (node {}): window {} covers |value| < {:.4}, calibration saw values up to {:.4}: signs beyond the window wrap",
                self.name,
                self.node,
                self.window,
                self.covered as f64 / scale,
                self.observed as f64 / scale
            )
        } else {
            format!(
                "DReLU site {} (node {}): window {} ignores so many low bits that {} of the calibration values ({:.3} %) may get a wrong sign",
                self.name,
                self.node,
                self.window,
                self.at_risk,
                100.0 * self.at_risk_fraction
            )
        }
    }
}

impl SiteCalibration {
    /// Checks `window` against this site's observations: too narrow when it does not cover
    /// the largest observed magnitude; too coarse when more than `max_error` of the values
    /// sit in the band its ignored bits decide.
    pub fn check(&self, window: DreluWindow, max_error: f64) -> Option<WindowWarning> {
        let covered = window.max_covered();
        let too_narrow = self.stats.max_abs > covered;
        let at_risk = if window.is_exact() {
            0
        } else {
            self.stats.at_risk(window.lsb_ignored)
        };
        let frac = at_risk as f64 / self.stats.count.max(1) as f64;
        (too_narrow || frac > max_error).then(|| WindowWarning {
            node: self.node,
            name: self.name.clone(),
            window,
            observed: self.stats.max_abs,
            covered,
            at_risk,
            at_risk_fraction: frac,
            too_narrow,
        })
    }
}

/// Per-site windows chosen from data, stored in the public part of a secure model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The data the values came from (as given on the command line).
    pub data: String,
    /// Images run.
    pub samples: u32,
    /// The margin, error target and cap the windows were chosen with.
    pub target: CalibrationTarget,
    /// One entry per DReLU site, in node order.
    pub sites: Vec<SiteCalibration>,
}

impl Calibration {
    /// The window of node `node`, if it is a calibrated site.
    pub fn window(&self, node: usize) -> Option<DreluWindow> {
        self.sites
            .iter()
            .find(|s| s.node as usize == node)
            .map(|s| s.window)
    }

    /// Mean window bits `k` over the sites.
    pub fn mean_bits(&self) -> f64 {
        if self.sites.is_empty() {
            return 64.0;
        }
        self.sites
            .iter()
            .map(|s| f64::from(s.window.bits))
            .sum::<f64>()
            / self.sites.len() as f64
    }

    /// Sites whose window `window_of(site)` is too narrow or too coarse for the observations
    /// (`max_error`: the tolerated fraction of values at risk from ignored bits).
    pub fn check(
        &self,
        window_of: impl Fn(&SiteCalibration) -> DreluWindow,
        max_error: f64,
    ) -> Vec<WindowWarning> {
        self.sites
            .iter()
            .filter_map(|s| s.check(window_of(s), max_error))
            .collect()
    }
}

/// Which windows an inference uses: all exact, one window for every site, or the windows
/// calibrated into the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DreluChoice {
    /// Every site exact (64 bits).
    #[default]
    Exact,
    /// The same window at every site.
    Uniform(DreluWindow),
    /// Each site's window from the model's [`Calibration`].
    Calibrated,
}

impl DreluChoice {
    /// Parses the CLI form: `exact`, `approx:K[,T]` or `calibrated`.
    pub fn parse(text: &str) -> Result<Self> {
        if text.trim().eq_ignore_ascii_case("calibrated") {
            return Ok(DreluChoice::Calibrated);
        }
        let w = DreluWindow::parse(text).map_err(|_| {
            CoreError::Invalid(format!(
                "cannot parse DReLU mode {text:?}: expected `exact`, `approx:BITS[,LSB_IGNORED]` or `calibrated`"
            ))
        })?;
        Ok(if w.is_exact() {
            DreluChoice::Exact
        } else {
            DreluChoice::Uniform(w)
        })
    }

    /// The window of every node of `model` (`None` for nodes that are no DReLU site), or an
    /// error when the model has no calibration and `Calibrated` is asked for. A calibrated
    /// model's sites without an entry stay exact.
    pub fn resolve(&self, model: &SecureModel) -> Result<Vec<Option<DreluWindow>>> {
        let mut out = vec![None; model.nodes.len()];
        let cal = match self {
            DreluChoice::Calibrated => Some(model.calibration.as_ref().ok_or_else(|| {
                CoreError::Invalid(format!(
                    "the secure model ({}) has no calibrated DReLU windows: run `knapsec calibrate` on it first",
                    model.arch
                ))
            })?),
            _ => None,
        };
        for (i, _) in model.drelu_sites() {
            out[i] = Some(match (self, cal) {
                (DreluChoice::Exact, _) => DreluWindow::EXACT,
                (DreluChoice::Uniform(w), _) => *w,
                (DreluChoice::Calibrated, Some(c)) => c.window(i).unwrap_or(DreluWindow::EXACT),
                (DreluChoice::Calibrated, None) => unreachable!("checked above"),
            });
        }
        Ok(out)
    }

    /// The guard rail: sites of a calibrated `model` whose window under this choice the
    /// calibration data show to be too narrow (or to leave more than the calibration's target
    /// fraction of values to the ignored bits). Empty for a model without calibration.
    pub fn check(&self, model: &SecureModel) -> Vec<WindowWarning> {
        let Some(cal) = &model.calibration else {
            return Vec::new();
        };
        let Ok(windows) = self.resolve(model) else {
            return Vec::new();
        };
        cal.check(
            |s| windows[s.node as usize].unwrap_or(DreluWindow::EXACT),
            cal.target.target_error,
        )
    }
}

impl std::fmt::Display for DreluChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DreluChoice::Exact => f.write_str("exact"),
            DreluChoice::Uniform(w) => write!(f, "{w}"),
            DreluChoice::Calibrated => f.write_str("calibrated"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(bits: u32, t: u32) -> DreluWindow {
        DreluWindow {
            bits,
            lsb_ignored: t,
        }
    }

    #[test]
    fn decide_is_the_carry_form_for_every_mask() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for win in [w(64, 0), w(16, 0), w(12, 4), w(9, 6), w(20, 3)] {
            for area in [1usize, 3, 4, 9] {
                let t = win.shift(area);
                for i in 0..4000 {
                    let a = (next() as i64 >> (i % 60)) as u64;
                    let x = next();
                    let tm = if t == 0 { 0 } else { (1u64 << t) - 1 };
                    let carry = (a & tm) + (x & tm) > tm;
                    assert_eq!(
                        win.decide(a, area, x),
                        win.decide_with_carry(a, area, carry),
                        "{win} area {area} a {a}"
                    );
                    if let Some(d) = win.decide_known(a, area) {
                        assert_eq!(d, win.decide(a, area, x));
                    }
                }
            }
        }
    }

    #[test]
    fn window_is_exact_inside_and_wraps_outside() {
        let win = w(12, 4);
        let (wd, t) = (1i64 << 15, 16i64);
        for a in [0, 1, 15, 16, -16, -17, -1000, 1000, wd - t, -wd + t] {
            assert_eq!(win.decide_known(a as u64, 1), Some(a >= 0), "a = {a}");
        }
        assert_eq!(win.decide_known((-1i64) as u64, 1), None);
        assert_eq!(win.decide_known(wd as u64, 1), Some(false));
        assert!(win.max_covered() == (wd - t) as u64);
        assert!(DreluWindow::EXACT.decide_known((-1i64) as u64, 9) == Some(false));
        assert_eq!(w(12, 4).shift(9), 8);
        assert_eq!(w(60, 4).shift(9), 4);
    }

    #[test]
    fn chosen_windows_cover_the_observed_values() {
        let mut st = SiteStats::default();
        for v in [-3000i64, 5000, -7, 12, 40000, -40001, 2, 0] {
            st.observe(v as u64, 1);
        }
        let target = CalibrationTarget {
            margin_bits: 1,
            target_error: 0.2,
            max_bits: 64,
        };
        let win = choose_window(&st, &target);
        assert!(win.max_covered() >= 2 * 40001, "{win}");
        // one negative value (-7) may be at risk, two (-7, -3000) may not: t = 11 bits
        assert_eq!(win.lsb_ignored, 11);
        assert!(st.at_risk(win.lsb_ignored) as f64 <= 0.2 * 8.0);
        let fewer = w(win.bits - 1, win.lsb_ignored);
        assert!(fewer.max_covered() < 2 * 40001);
        // patches: the sum of 4 pixels is compared at the mean scale
        let mut p = SiteStats::default();
        p.observe(4 * 1000, 4);
        assert_eq!(p.max_abs, 1000);
        // a cap makes the window too narrow, and the check says so
        let capped = choose_window(
            &st,
            &CalibrationTarget {
                max_bits: 4,
                ..target
            },
        );
        let site = SiteCalibration {
            node: 3,
            name: "relu".into(),
            kind: SiteKind::BlockRelu,
            window: capped,
            stats: st.clone().trimmed(),
        };
        let warn = site.check(capped, 0.2).expect("too narrow");
        assert!(warn.too_narrow);
        assert!(warn.describe(12).contains("relu"));
        assert!(site.check(win, 0.2).is_none());
        assert!(site.check(w(40, 12), 0.2).unwrap().at_risk > 1);
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(DreluWindow::parse("approx:16,4").unwrap(), w(16, 4));
        assert_eq!(DreluWindow::parse("exact").unwrap(), DreluWindow::EXACT);
        assert!(DreluWindow::parse("approx:1").is_err());
        assert_eq!(w(16, 4).to_string(), "approx:16,4");
    }
}
