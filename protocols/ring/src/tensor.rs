//! [`RingTensor`]: dense tensors over the ring Z_2^64 (digest §6.2).
//!
//! Elements are stored as `u64` and every arithmetic operation wraps modulo 2^64, which is the
//! ring the secret shares live in. A ring element `v` *means* the signed integer `v as i64`
//! (two's complement) when it encodes a fixed-point number; [`RingTensor::to_i64`] and
//! [`RingTensor::from_i64`] convert without changing any bit. Arithmetic shift right
//! ([`RingTensor::shr_arith`]) treats elements as signed; it is the local truncation of
//! digest §6.7.
//!
//! Shapes are general (`dims`, row-major); activations are `[C, H, W]` (batch 1), conv weights
//! `[O, C/groups, kh, kw]`, matrices `[rows, cols]`.

use crate::error::{Result, RingError};
use rayon::prelude::*;

/// Element counts above which element-wise loops run on the rayon pool.
pub(crate) const PAR_THRESHOLD: usize = 1 << 16;

/// A dense row-major tensor over Z_2^64.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RingTensor {
    dims: Vec<usize>,
    data: Vec<u64>,
}

impl std::fmt::Debug for RingTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOW: usize = 8;
        let head: Vec<i64> = self.data.iter().take(SHOW).map(|&v| v as i64).collect();
        write!(
            f,
            "RingTensor{:?} {:?}{}",
            self.dims,
            head,
            if self.data.len() > SHOW { " .." } else { "" }
        )
    }
}

fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Applies `f` element-wise to `a` and `b` into `out`, in parallel for large tensors.
fn zip_map(out: &mut [u64], a: &[u64], b: &[u64], f: impl Fn(u64, u64) -> u64 + Sync) {
    if out.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(PAR_THRESHOLD / 4)
            .zip(
                a.par_chunks(PAR_THRESHOLD / 4)
                    .zip(b.par_chunks(PAR_THRESHOLD / 4)),
            )
            .for_each(|(o, (a, b))| {
                o.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(o, (&a, &b))| *o = f(a, b))
            });
    } else {
        out.iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(o, (&a, &b))| *o = f(a, b));
    }
}

/// `a[i] = f(a[i], b[i])`, in parallel for large tensors.
fn zip_in_place(a: &mut [u64], b: &[u64], f: impl Fn(u64, u64) -> u64 + Sync) {
    if a.len() >= PAR_THRESHOLD {
        a.par_chunks_mut(PAR_THRESHOLD / 4)
            .zip(b.par_chunks(PAR_THRESHOLD / 4))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, &b)| *a = f(*a, b)));
    } else {
        a.iter_mut().zip(b).for_each(|(a, &b)| *a = f(*a, b));
    }
}

/// Applies `f` in place to every element, in parallel for large tensors.
fn map_in_place(data: &mut [u64], f: impl Fn(u64) -> u64 + Sync) {
    if data.len() >= PAR_THRESHOLD {
        data.par_chunks_mut(PAR_THRESHOLD / 4)
            .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
    } else {
        data.iter_mut().for_each(|v| *v = f(*v));
    }
}

impl RingTensor {
    // ----- construction -----

    /// A tensor of zeros.
    pub fn zeros(dims: &[usize]) -> Self {
        RingTensor {
            dims: dims.to_vec(),
            data: vec![0; numel(dims)],
        }
    }

    /// A tensor with every element equal to `value`.
    pub fn filled(dims: &[usize], value: u64) -> Self {
        RingTensor {
            dims: dims.to_vec(),
            data: vec![value; numel(dims)],
        }
    }

    /// Wraps `data` (row-major) with shape `dims`; the element count must match.
    pub fn from_vec(dims: &[usize], data: Vec<u64>) -> Result<Self> {
        let expected = numel(dims);
        if data.len() != expected {
            return Err(RingError::WrongLength {
                op: "from_vec",
                shape: dims.to_vec(),
                expected,
                found: data.len(),
            });
        }
        Ok(RingTensor {
            dims: dims.to_vec(),
            data,
        })
    }

    /// Like [`Self::from_vec`] from signed values (bit-for-bit reinterpretation).
    pub fn from_i64(dims: &[usize], data: &[i64]) -> Result<Self> {
        Self::from_vec(dims, data.iter().map(|&v| v as u64).collect())
    }

    // ----- access -----

    /// The shape.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[u64] {
        &self.data
    }

    /// The elements, row-major, mutable.
    pub fn data_mut(&mut self) -> &mut [u64] {
        &mut self.data
    }

    /// Consumes the tensor, returning its elements.
    pub fn into_vec(self) -> Vec<u64> {
        self.data
    }

    /// The elements as signed integers (two's complement).
    pub fn to_i64(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v as i64).collect()
    }

    /// `(C, H, W)` of a 3-dimensional tensor.
    pub fn chw(&self) -> Result<(usize, usize, usize)> {
        match self.dims[..] {
            [c, h, w] => Ok((c, h, w)),
            _ => Err(RingError::WrongRank {
                op: "chw",
                expected: 3,
                shape: self.dims.clone(),
            }),
        }
    }

    /// The same elements with another shape of equal element count.
    pub fn reshape(mut self, dims: &[usize]) -> Result<Self> {
        if numel(dims) != self.data.len() {
            return Err(RingError::WrongLength {
                op: "reshape",
                shape: dims.to_vec(),
                expected: numel(dims),
                found: self.data.len(),
            });
        }
        self.dims = dims.to_vec();
        Ok(self)
    }

    fn same_shape(&self, other: &Self, op: &'static str) -> Result<()> {
        if self.dims != other.dims {
            return Err(RingError::ShapeMismatch {
                op,
                left: self.dims.clone(),
                right: other.dims.clone(),
            });
        }
        Ok(())
    }

    // ----- element-wise arithmetic (wrapping) -----

    /// A tensor of `self`'s shape holding `f(self[i], other[i])`; `op` names the operation in
    /// a shape mismatch.
    fn zip_with(
        &self,
        other: &Self,
        op: &'static str,
        f: impl Fn(u64, u64) -> u64 + Sync,
    ) -> Result<Self> {
        self.same_shape(other, op)?;
        let mut out = vec![0; self.len()];
        zip_map(&mut out, &self.data, &other.data, f);
        Ok(RingTensor {
            dims: self.dims.clone(),
            data: out,
        })
    }

    /// `self + other` element-wise.
    pub fn add(&self, other: &Self) -> Result<Self> {
        self.zip_with(other, "add", u64::wrapping_add)
    }

    /// `self - other` element-wise.
    pub fn sub(&self, other: &Self) -> Result<Self> {
        self.zip_with(other, "sub", u64::wrapping_sub)
    }

    /// `self * other` element-wise (no truncation).
    pub fn mul(&self, other: &Self) -> Result<Self> {
        self.zip_with(other, "mul", u64::wrapping_mul)
    }

    /// `self += other` element-wise.
    pub fn add_assign(&mut self, other: &Self) -> Result<()> {
        self.same_shape(other, "add_assign")?;
        zip_in_place(&mut self.data, &other.data, u64::wrapping_add);
        Ok(())
    }

    /// `self -= other` element-wise.
    pub fn sub_assign(&mut self, other: &Self) -> Result<()> {
        self.same_shape(other, "sub_assign")?;
        zip_in_place(&mut self.data, &other.data, u64::wrapping_sub);
        Ok(())
    }

    /// `-self` element-wise.
    pub fn neg(&self) -> Self {
        let mut out = self.clone();
        map_in_place(&mut out.data, u64::wrapping_neg);
        out
    }

    /// `self * k` for a ring scalar `k`.
    pub fn scale(&self, k: u64) -> Self {
        let mut out = self.clone();
        map_in_place(&mut out.data, |v| v.wrapping_mul(k));
        out
    }

    /// Adds the ring scalar `k` to every element, in place.
    pub fn add_scalar_in_place(&mut self, k: u64) {
        map_in_place(&mut self.data, |v| v.wrapping_add(k));
    }

    /// Arithmetic shift right by `bits` (elements read as signed): the local truncation of
    /// digest §6.7, `floor(v / 2^bits)`.
    pub fn shr_arith(&self, bits: u32) -> Self {
        let mut out = self.clone();
        out.shr_arith_in_place(bits);
        out
    }

    /// In-place [`Self::shr_arith`].
    pub fn shr_arith_in_place(&mut self, bits: u32) {
        let bits = bits.min(63);
        map_in_place(&mut self.data, |v| ((v as i64) >> bits) as u64);
    }

    /// Adds `bias[c]` to every element of channel `c` of a `[C, H, W]` tensor, in place.
    pub fn add_channel_bias(&mut self, bias: &[u64]) -> Result<()> {
        let (c, h, w) = self.chw()?;
        if bias.len() != c {
            return Err(RingError::WrongLength {
                op: "add_channel_bias",
                shape: vec![c],
                expected: c,
                found: bias.len(),
            });
        }
        let plane = h * w;
        if plane == 0 {
            return Ok(());
        }
        self.data
            .par_chunks_mut(plane)
            .zip(bias.par_iter())
            .for_each(|(p, &b)| {
                p.iter_mut().for_each(|v| *v = v.wrapping_add(b));
            });
        Ok(())
    }

    // ----- channel slicing, concatenation, broadcast ([C, H, W]) -----

    /// Channels `range` of a `[C, H, W]` tensor.
    pub fn slice_channels(&self, range: std::ops::Range<usize>) -> Result<Self> {
        let (c, h, w) = self.chw()?;
        if range.start > range.end || range.end > c {
            return Err(RingError::invalid(
                "slice_channels",
                format!("range {range:?} outside 0..{c}"),
            ));
        }
        let plane = h * w;
        Ok(RingTensor {
            dims: vec![range.len(), h, w],
            data: self.data[range.start * plane..range.end * plane].to_vec(),
        })
    }

    /// Concatenates `[C_i, H, W]` tensors along channels.
    pub fn concat_channels(parts: &[&RingTensor]) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(RingError::invalid(
                "concat_channels",
                "no tensors to concatenate",
            ));
        };
        let (_, h, w) = first.chw()?;
        let mut c_total = 0;
        for p in parts {
            let (c, ph, pw) = p.chw()?;
            if (ph, pw) != (h, w) {
                return Err(RingError::ShapeMismatch {
                    op: "concat_channels",
                    left: first.dims.clone(),
                    right: p.dims.clone(),
                });
            }
            c_total += c;
        }
        let mut data = Vec::with_capacity(c_total * h * w);
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Ok(RingTensor {
            dims: vec![c_total, h, w],
            data,
        })
    }

    /// Repeats a `[C, 1, 1]` tensor to `[C, height, width]`.
    pub fn broadcast_hw(&self, height: usize, width: usize) -> Result<Self> {
        let (c, h, w) = self.chw()?;
        if (h, w) != (1, 1) {
            return Err(RingError::invalid(
                "broadcast_hw",
                format!("input must be [C, 1, 1], got {:?}", self.dims),
            ));
        }
        let plane = height * width;
        let mut data = Vec::with_capacity(c * plane);
        for &v in &self.data {
            data.extend(std::iter::repeat_n(v, plane));
        }
        Ok(RingTensor {
            dims: vec![c, height, width],
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wrapping_arithmetic() {
        let a = RingTensor::from_vec(&[3], vec![u64::MAX, 5, 1 << 63]).unwrap();
        let b = RingTensor::from_vec(&[3], vec![1, 7, 1 << 63]).unwrap();
        assert_eq!(a.add(&b).unwrap().data(), &[0, 12, 0]);
        assert_eq!(a.sub(&b).unwrap().to_i64(), vec![-2, -2, 0]);
        assert_eq!(a.mul(&b).unwrap().data(), &[u64::MAX, 35, 0]);
        assert_eq!(a.neg().to_i64(), vec![1, -5, i64::MIN]);
        assert_eq!(a.scale(2).to_i64(), vec![-2, 10, 0]);
        let mut c = a.clone();
        c.add_assign(&b).unwrap();
        c.sub_assign(&b).unwrap();
        assert_eq!(c, a);
    }

    #[test]
    fn shape_errors() {
        let a = RingTensor::zeros(&[2, 3]);
        let b = RingTensor::zeros(&[3, 2]);
        assert!(matches!(
            a.add(&b),
            Err(RingError::ShapeMismatch { op: "add", .. })
        ));
        assert!(RingTensor::from_vec(&[2, 2], vec![0; 3]).is_err());
        assert!(a.clone().reshape(&[5]).is_err());
        assert_eq!(a.clone().reshape(&[6]).unwrap().dims(), &[6]);
        assert!(a.chw().is_err());
    }

    #[test]
    fn arithmetic_shift_floors() {
        let t = RingTensor::from_i64(&[4], &[7, -7, -1, 8]).unwrap();
        assert_eq!(t.shr_arith(1).to_i64(), vec![3, -4, -1, 4]);
    }

    #[test]
    fn channels_and_broadcast() {
        let t = RingTensor::from_vec(&[3, 1, 2], (0..6).collect()).unwrap();
        let s = t.slice_channels(1..3).unwrap();
        assert_eq!(s.data(), &[2, 3, 4, 5]);
        let c = RingTensor::concat_channels(&[&t.slice_channels(0..1).unwrap(), &s]).unwrap();
        assert_eq!(c, t);
        assert!(t.slice_channels(2..4).is_err());
        let g = RingTensor::from_vec(&[2, 1, 1], vec![4, 9]).unwrap();
        assert_eq!(g.broadcast_hw(1, 3).unwrap().data(), &[4, 4, 4, 9, 9, 9]);
        assert!(t.broadcast_hw(2, 2).is_err());
        let mut b = t.clone();
        b.add_channel_bias(&[10, 20, 30]).unwrap();
        assert_eq!(b.data(), &[10, 11, 22, 23, 34, 35]);
    }

    proptest! {
        #[test]
        fn large_parallel_paths_match_scalar(seed in any::<u64>()) {
            let n = PAR_THRESHOLD + 17;
            let a: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(seed | 1).rotate_left(17)).collect();
            let b: Vec<u64> = (0..n as u64).map(|i| i ^ seed).collect();
            let ta = RingTensor::from_vec(&[n], a.clone()).unwrap();
            let tb = RingTensor::from_vec(&[n], b.clone()).unwrap();
            let s = ta.add(&tb).unwrap();
            let m = ta.mul(&tb).unwrap();
            for i in [0, 1, n / 2, n - 1] {
                prop_assert_eq!(s.data()[i], a[i].wrapping_add(b[i]));
                prop_assert_eq!(m.data()[i], a[i].wrapping_mul(b[i]));
            }
        }
    }
}
