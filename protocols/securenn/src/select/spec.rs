//! What a batch of secure selections compares and selects, public to all three parties: the
//! patches (groups of pixels summed for each decision), the pixels each decision multiplies,
//! the offset and the window of every patch (digest §6.11, §6.12), and the closed form of its
//! bytes. See [`crate::select`] for the protocol.

use crate::error::{Result, SecureNnError};
use crate::options::DreluMode;

/// Groups of pixel indices (patches): either one group per pixel, or compressed rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Groups {
    /// `n` groups, group `i` = `{i}`.
    Singles(usize),
    /// Group `g` = `idx[ptr[g]..ptr[g + 1]]`.
    Csr {
        /// Start of each group in `idx` (one more entry than groups).
        ptr: Vec<usize>,
        /// Pixel indices of all groups, group after group.
        idx: Vec<u32>,
    },
}

impl Groups {
    /// Number of groups.
    pub fn len(&self) -> usize {
        match self {
            Groups::Singles(n) => *n,
            Groups::Csr { ptr, .. } => ptr.len().saturating_sub(1),
        }
    }

    /// True if there is no group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f(pixel)` for every pixel of group `g`.
    #[inline]
    pub(crate) fn for_each(&self, g: usize, mut f: impl FnMut(usize)) {
        match self {
            Groups::Singles(_) => f(g),
            Groups::Csr { ptr, idx } => idx[ptr[g]..ptr[g + 1]].iter().for_each(|&i| f(i as usize)),
        }
    }

    /// Number of pixels of group `g`.
    pub(super) fn size(&self, g: usize) -> usize {
        match self {
            Groups::Singles(_) => 1,
            Groups::Csr { ptr, .. } => ptr[g + 1] - ptr[g],
        }
    }
}

/// One batch of secure selections (public: all three parties build the same spec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectSpec {
    /// Number of pixel values `M`.
    pub pixels: usize,
    /// The patches: pixels summed for each decision.
    pub cmp: Groups,
    /// The pixels multiplied by each decision (`None`: the patch's own pixels). Every pixel
    /// belongs to at most one group; pixels in none get 0.
    pub sel: Option<Groups>,
    /// Subtracted from every patch sum before the sign test: 1 gives `[sum > 0]`, 0 gives
    /// `[sum ≥ 0]`.
    pub offset: u64,
    /// Compared bits `n = k − 1`.
    pub n: u32,
    /// Ignored low bits `t'` of each patch.
    pub shift: Vec<u8>,
    /// `Some(c)`: the pixels are two halves and pixel `E + i` (`E = M / 2`) holds pixel
    /// `i`'s value minus the public constant `c` (ReLU6's `[x, x − 6]`). The second half
    /// then shares the first half's masks, so only the first half is opened (see
    /// [`crate::select`]).
    pub twin: Option<u64>,
}

impl SelectSpec {
    /// A spec over `pixels` values with patches `cmp`, under `mode` (see the module docs for
    /// how the window follows the patch area).
    pub fn new(
        pixels: usize,
        cmp: Groups,
        sel: Option<Groups>,
        offset: u64,
        mode: DreluMode,
    ) -> Result<Self> {
        mode.validate()?;
        // The window arithmetic is `knapsec-core`'s, shared with the plain oracle.
        let window = mode.uniform_window().ok_or_else(|| {
            SecureNnError::Options(
                "a selection needs one window: resolve `Calibrated` per site first".into(),
            )
        })?;
        let k = window.bits;
        // One shift per patch size: a layer has one or a few sizes and millions of patches.
        let shift = match &cmp {
            Groups::Singles(len) => vec![window.shift(1) as u8; *len],
            Groups::Csr { .. } => {
                let mut last = (0, window.shift(0) as u8);
                (0..cmp.len())
                    .map(|g| {
                        let size = cmp.size(g);
                        if size != last.0 {
                            last = (size, window.shift(size) as u8);
                        }
                        last.1
                    })
                    .collect()
            }
        };
        if let Some(s) = &sel
            && s.len() != cmp.len()
        {
            return Err(SecureNnError::Options(format!(
                "{} selection groups for {} patches",
                s.len(),
                cmp.len()
            )));
        }
        Ok(SelectSpec {
            pixels,
            cmp,
            sel,
            offset,
            n: k - 1,
            shift,
            twin: None,
        })
    }

    /// This spec with its second half of pixels declared to be the first half minus the
    /// public constant `c` (see [`SelectSpec::twin`]); refused for an odd pixel count.
    pub fn twinned(mut self, c: u64) -> Result<Self> {
        if !self.pixels.is_multiple_of(2) {
            return Err(SecureNnError::Options(format!(
                "a twinned selection needs an even pixel count, not {}",
                self.pixels
            )));
        }
        self.twin = Some(c);
        Ok(self)
    }

    /// Pixels opened (and masked by a mask of their own): the first half of a twinned spec,
    /// every pixel otherwise.
    pub fn opened(&self) -> usize {
        if self.twin.is_some() {
            self.pixels / 2
        } else {
            self.pixels
        }
    }

    /// The opened pixel whose masks pixel `i` takes: `i` itself, or `i − E` in a twinned
    /// spec's second half.
    pub fn opened_pixel(&self, i: usize) -> usize {
        let e = self.opened();
        if i >= e { i - e } else { i }
    }

    /// Number of decisions (DReLUs).
    pub fn patches(&self) -> usize {
        self.cmp.len()
    }

    pub(super) fn sel(&self) -> &Groups {
        self.sel.as_ref().unwrap_or(&self.cmp)
    }

    /// Bytes of one call (online + offline), the closed form of the module docs: 16 bytes
    /// per opened pixel, 8 per pixel, `3n + 8` per patch.
    pub fn bytes(&self) -> u64 {
        let (m, o, n) = (
            self.pixels as u64,
            self.opened() as u64,
            self.patches() as u64,
        );
        16 * o + 8 * m + (3 * u64::from(self.n) + 8) * n
    }
}
