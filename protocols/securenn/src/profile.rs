//! Where a party's CPU time goes, by op kind (linear, comparison, selection, pooling, PRG,
//! other), so that `knapsec bench secure` shows the next bottleneck without a profiler.
//!
//! Each thread charges its own CPU clock (`CLOCK_THREAD_CPUTIME_ID`) to the kind it is in:
//! [`span`] switches the kind until its guard drops, [`take`] returns and resets the thread's
//! totals. Waiting for a message costs no CPU, so it is charged to nothing. Work that a
//! party hands to the rayon pool (the products of the linear layers) runs on the pool's
//! threads and is not in the party's thread clock: [`crate::sim`] reports it apart, as the
//! process's CPU time less the party threads'.

#![allow(unsafe_code)]

use serde::Serialize;
use std::cell::Cell;

/// What a stretch of a party's work is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Linear layers: masks applied, products (their share on the party's own thread).
    Linear,
    /// DReLU: sums of patches, the helper's bit shares, PrivateCompare messages and the
    /// helper's search for a zero.
    Comparison,
    /// The masked opening and the local products `b·v`, the helper's `h·m`.
    Selection,
    /// Pooling: window taps and sums, the max-pool and argmax trees' differences.
    Pooling,
    /// Drawing correlated randomness from the PRGs (AES-CTR, values mod 67).
    Prg,
    /// Everything else (encoding, local adds, messages in and out).
    Other,
}

/// CPU seconds per op kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CpuByKind {
    /// [`OpKind::Linear`].
    pub linear: f64,
    /// [`OpKind::Comparison`].
    pub comparison: f64,
    /// [`OpKind::Selection`].
    pub selection: f64,
    /// [`OpKind::Pooling`].
    pub pooling: f64,
    /// [`OpKind::Prg`].
    pub prg: f64,
    /// [`OpKind::Other`].
    pub other: f64,
}

impl CpuByKind {
    fn slot(&mut self, kind: OpKind) -> &mut f64 {
        match kind {
            OpKind::Linear => &mut self.linear,
            OpKind::Comparison => &mut self.comparison,
            OpKind::Selection => &mut self.selection,
            OpKind::Pooling => &mut self.pooling,
            OpKind::Prg => &mut self.prg,
            OpKind::Other => &mut self.other,
        }
    }

    /// The seconds by kind name (`"linear"`, `"comparison"`, `"selection"`, `"pooling"`,
    /// `"prg"`, `"other"`), for the runtime's reports.
    pub fn by_name(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("linear", self.linear),
            ("comparison", self.comparison),
            ("selection", self.selection),
            ("pooling", self.pooling),
            ("prg", self.prg),
            ("other", self.other),
        ]
    }

    /// The inverse of [`CpuByKind::by_name`] (unknown names are ignored).
    pub fn from_names<'a>(seconds: impl IntoIterator<Item = (&'a str, f64)>) -> Self {
        let mut out = CpuByKind::default();
        for (name, s) in seconds {
            match name {
                "linear" => out.linear += s,
                "comparison" => out.comparison += s,
                "selection" => out.selection += s,
                "pooling" => out.pooling += s,
                "prg" => out.prg += s,
                "other" => out.other += s,
                _ => {}
            }
        }
        out
    }

    /// Adds `other` to these figures.
    pub fn merge(&mut self, other: &CpuByKind) {
        self.linear += other.linear;
        self.comparison += other.comparison;
        self.selection += other.selection;
        self.pooling += other.pooling;
        self.prg += other.prg;
        self.other += other.other;
    }

    /// The sum over kinds.
    pub fn total(&self) -> f64 {
        self.linear + self.comparison + self.selection + self.pooling + self.prg + self.other
    }
}

/// CPU seconds of the calling thread (0 where the clock is unavailable).
pub fn thread_cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}

thread_local! {
    static CURRENT: Cell<OpKind> = const { Cell::new(OpKind::Other) };
    static STAMP: Cell<Option<f64>> = const { Cell::new(None) };
    static TOTALS: Cell<CpuByKind> = Cell::new(CpuByKind::default());
}

/// Charges the time since the last stamp to the current kind.
fn charge() {
    let now = thread_cpu_seconds();
    let last = STAMP.with(|s| s.replace(Some(now))).unwrap_or(now);
    let kind = CURRENT.with(Cell::get);
    TOTALS.with(|t| {
        let mut v = t.get();
        *v.slot(kind) += now - last;
        t.set(v);
    });
}

/// While the guard lives, this thread's CPU time is charged to `kind` (then to the kind
/// before it again).
#[must_use = "the kind applies until the guard drops"]
pub fn span(kind: OpKind) -> Span {
    charge();
    Span {
        prev: CURRENT.with(|c| c.replace(kind)),
    }
}

/// The guard of [`span`].
#[derive(Debug)]
pub struct Span {
    prev: OpKind,
}

impl Drop for Span {
    fn drop(&mut self) {
        charge();
        CURRENT.with(|c| c.set(self.prev));
    }
}

/// This thread's CPU seconds by kind since its previous call (or since its first span),
/// then reset.
pub fn take() -> CpuByKind {
    charge();
    TOTALS.with(|t| t.replace(CpuByKind::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burn(ms: u64) {
        let start = thread_cpu_seconds();
        let mut x = 1u64;
        while thread_cpu_seconds() - start < ms as f64 * 1e-3 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }

    #[test]
    fn spans_charge_their_kind_and_nest() {
        std::thread::spawn(|| {
            take();
            {
                let _a = span(OpKind::Linear);
                burn(20);
                {
                    let _b = span(OpKind::Prg);
                    burn(20);
                }
                burn(20);
            }
            let t = take();
            assert!(t.linear >= 0.04 && t.linear < 0.1, "{t:?}");
            assert!(t.prg >= 0.02 && t.prg < 0.06, "{t:?}");
            assert!(t.comparison == 0.0 && t.selection == 0.0, "{t:?}");
            // reset
            assert!(take().total() < 0.01);
        })
        .join()
        .unwrap();
    }
}
