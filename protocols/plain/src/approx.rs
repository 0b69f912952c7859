//! The DReLU sites of a secure model evaluated the way a SecureNN-style backend computes them
//! (digest §6.11, §6.12, §6.14), so that accuracy under an approximate DReLU can be measured
//! in the clear, and the compared values can be observed for calibration
//! ([`knapsec_core::drelu`]).
//!
//! Per site the same decomposition as `knapsec-securenn`: a block ReLU decides each patch on
//! `sum − 1` (one comparison at the patch's area); ReLU6 is `ReLU(x) − ReLU(x − 6)` (two
//! single-pixel comparisons); max pooling is the pairwise tree `b + ReLU(a − b)` over the
//! window's taps (pairs `(0,1), (2,3), …`, an odd last tap carried to the next level). Every
//! comparison goes through [`DreluWindow::decide`] with a mask drawn from a seeded hash in
//! place of the helper's random mask: the decision is bit for bit the secure one wherever it
//! does not depend on the mask ([`DreluWindow::decide_known`]), and has the secure
//! distribution (1 with probability `(T − |a|)/T`) in the band `−T < a < 0` where it does.

use knapsec_core::block::BlockSize;
use knapsec_core::drelu::{DreluWindow, SiteStats};
use knapsec_core::graph::PoolGeometry;
use knapsec_ring::{BlockLayout, ChannelBlock, RingTensor, TapPadding, window_taps};

/// One site's evaluation context: its window, the mask stream and where to record.
pub(crate) struct Site<'a> {
    pub window: DreluWindow,
    pub seed: u64,
    pub node: usize,
    pub stats: Option<&'a mut SiteStats>,
}

/// SplitMix64 finaliser: the stand-in for the helper's uniform mask.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Site<'_> {
    /// The decision `[a ≥ 0]` under the window, for comparison `idx` of level `level`.
    #[inline]
    fn decide(&mut self, a: u64, area: usize, level: u64, idx: u64) -> bool {
        if let Some(s) = self.stats.as_deref_mut() {
            s.observe(a, area);
        }
        if self.window.is_exact() {
            return (a as i64) >= 0;
        }
        let x = mix(self.seed ^ mix((self.node as u64) << 40 ^ level << 32 ^ idx));
        self.window.decide(a, area, x)
    }
}

/// Block ReLU: a patch is kept iff the decision on `sum − 1` is 1.
pub(crate) fn block_relu(
    x: &RingTensor,
    blocks: &[BlockSize],
    site: &mut Site<'_>,
) -> knapsec_ring::Result<RingTensor> {
    let (c, h, w) = x.chw()?;
    let layout = BlockLayout::new(c, h, w, blocks)?;
    let sums = layout.patch_sums(x)?;
    let mut keep = vec![0u64; sums.len()];
    for cb in layout.channels() {
        if let ChannelBlock::Patch {
            bh,
            bw,
            rows,
            cols,
            offset,
        } = *cb
        {
            for r in 0..rows {
                let ah = bh.min(h - r * bh);
                for q in 0..cols {
                    let area = ah * bw.min(w - q * bw);
                    let g = offset + r * cols + q;
                    keep[g] = u64::from(site.decide(sums[g].wrapping_sub(1), area, 0, g as u64));
                }
            }
        }
    }
    let mask = layout.expand(&keep, 1, 0)?;
    x.mul(&mask)
}

/// ReLU6 as `ReLU(x) − ReLU(x − 6)`.
pub(crate) fn relu6(x: &RingTensor, frac_bits: u32, site: &mut Site<'_>) -> RingTensor {
    let six = 6u64 << frac_bits;
    let m = x.len() as u64;
    let mut y = x.clone();
    for (i, v) in y.data_mut().iter_mut().enumerate() {
        let a = *v;
        let b = a.wrapping_sub(six);
        let lo = if site.decide(a, 1, 0, i as u64) { a } else { 0 };
        let hi = if site.decide(b, 1, 0, m + i as u64) {
            b
        } else {
            0
        };
        *v = lo.wrapping_sub(hi);
    }
    y
}

/// Max pooling as the secure pairwise tree over the window's taps (edge padding).
pub(crate) fn max_pool(
    x: &RingTensor,
    geo: &PoolGeometry,
    site: &mut Site<'_>,
) -> knapsec_ring::Result<RingTensor> {
    let taps = window_taps(x, geo, TapPadding::Edge)?;
    let dims = taps[0].dims().to_vec();
    let mut cands: Vec<Vec<u64>> = taps.into_iter().map(|t| t.into_vec()).collect();
    let mut level = 0u64;
    while cands.len() > 1 {
        let pairs = cands.len() / 2;
        let mut next = Vec::with_capacity(cands.len() - pairs);
        for q in 0..pairs {
            let size = cands[2 * q].len();
            let merged: Vec<u64> = (0..size)
                .map(|e| {
                    let (a, b) = (cands[2 * q][e], cands[2 * q + 1][e]);
                    let d = a.wrapping_sub(b);
                    let idx = (q * size + e) as u64;
                    if site.decide(d, 1, level, idx) {
                        b.wrapping_add(d)
                    } else {
                        b
                    }
                })
                .collect();
            next.push(merged);
        }
        if cands.len() % 2 == 1 {
            next.push(cands.pop().expect("odd candidate"));
        }
        cands = next;
        level += 1;
    }
    RingTensor::from_vec(&dims, cands.pop().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use crate::{DreluEmulation, evaluate, evaluate_with};
    use knapsec_core::block::BlockSize;
    use knapsec_core::drelu::{DreluChoice, DreluWindow, SiteStats};
    use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
    use knapsec_core::graph_build::{GraphBuilder, random_weights};

    fn net() -> (SecureModel, ModelWeights) {
        let mut g = GraphBuilder::new("approx", 12, [3, 8, 8]);
        let blocks = vec![
            BlockSize::RELU,
            BlockSize::Patch { h: 2, w: 3 },
            BlockSize::Identity,
            BlockSize::Patch { h: 3, w: 3 },
        ];
        let r = crate::cases::conv_block_relu(&mut g, blocks);
        let p = g.max_pool("pool", r, [3, 3], [2, 2], [1, 1]).unwrap();
        g.relu6("r6", p).unwrap();
        let (m, _) = g.finish(OutputKind::Segmentation).unwrap();
        let w = random_weights(&m, 5);
        (m, w)
    }

    fn input(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + seed as f32).sin() * 3.0)
            .collect()
    }

    #[test]
    fn exact_emulation_equals_the_plaintext_ops_and_records_every_comparison() {
        let (m, w) = net();
        let x = input(192, 1);
        let mut stats = vec![SiteStats::default(); m.nodes.len()];
        let emu = evaluate_with(&m, &w, &x, &DreluEmulation::default(), Some(&mut stats)).unwrap();
        assert_eq!(emu, evaluate(&m, &w, &x).unwrap());
        for (i, _) in m.drelu_sites() {
            assert_eq!(stats[i].count, m.site_drelus(i), "node {i}");
        }
        assert_eq!(stats[1].count, 0, "the conv is no site");
    }

    #[test]
    fn a_wide_window_changes_nothing_and_a_narrow_one_wraps() {
        let (m, w) = net();
        let x = input(192, 2);
        let exact = evaluate(&m, &w, &x).unwrap();
        let wide = DreluEmulation {
            choice: DreluChoice::Uniform(DreluWindow {
                bits: 40,
                lsb_ignored: 0,
            }),
            seed: 3,
        };
        assert_eq!(evaluate_with(&m, &w, &x, &wide, None).unwrap(), exact);
        let narrow = DreluEmulation {
            choice: DreluChoice::Uniform(DreluWindow {
                bits: 4,
                lsb_ignored: 0,
            }),
            seed: 3,
        };
        assert_ne!(evaluate_with(&m, &w, &x, &narrow, None).unwrap(), exact);
        // without a calibration the calibrated choice is an error naming what to run
        let e = evaluate_with(
            &m,
            &w,
            &x,
            &DreluEmulation {
                choice: DreluChoice::Calibrated,
                seed: 0,
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("knapsec calibrate"), "{e}");
    }
}
