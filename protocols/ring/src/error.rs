//! The one error enum of knapsec-ring: shape and parameter errors of ring operations.

/// Result alias of this crate.
pub type Result<T, E = RingError> = std::result::Result<T, E>;

/// Errors of ring operations. Each names the operation and the shapes involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Two operands that must have the same shape do not.
    #[error("{op}: shapes {left:?} and {right:?} differ")]
    ShapeMismatch {
        op: &'static str,
        left: Vec<usize>,
        right: Vec<usize>,
    },
    /// A data buffer does not hold as many elements as its shape says.
    #[error("{op}: shape {shape:?} needs {expected} elements, got {found}")]
    WrongLength {
        op: &'static str,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    /// An operand has the wrong number of dimensions.
    #[error("{op}: expected a {expected}-dimensional tensor, got shape {shape:?}")]
    WrongRank {
        op: &'static str,
        expected: usize,
        shape: Vec<usize>,
    },
    /// Invalid parameters (zero stride, kernel larger than the padded input, groups, ...).
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
    /// `KNAPSEC_RING_KERNEL` names no kernel, or one this CPU cannot run.
    #[error("KNAPSEC_RING_KERNEL={value:?}: {reason}")]
    KernelRequest { value: String, reason: String },
}

impl RingError {
    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        RingError::Invalid {
            op,
            message: message.into(),
        }
    }
}
