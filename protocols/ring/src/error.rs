//! The one error enum of knapsec-ring: shape and parameter errors of ring operations.

/// Result alias of this crate.
pub type Result<T, E = RingError> = std::result::Result<T, E>;

/// Errors of ring operations. Each names the operation and the shapes involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Two operands that must have the same shape do not.
    #[error("{op}: shapes {left:?} and {right:?} differ")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// Shape of the left operand.
        left: Vec<usize>,
        /// Shape of the right operand.
        right: Vec<usize>,
    },
    /// A data buffer does not hold as many elements as its shape says.
    #[error("{op}: shape {shape:?} needs {expected} elements, got {found}")]
    WrongLength {
        /// The operation.
        op: &'static str,
        /// The shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements the buffer holds.
        found: usize,
    },
    /// An operand has the wrong number of dimensions.
    #[error("{op}: expected a {expected}-dimensional tensor, got shape {shape:?}")]
    WrongRank {
        /// The operation.
        op: &'static str,
        /// Dimensions the operation needs.
        expected: usize,
        /// The operand's shape.
        shape: Vec<usize>,
    },
    /// Invalid parameters (zero stride, kernel larger than the padded input, groups, ...).
    #[error("{op}: {message}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What is wrong with its parameters.
        message: String,
    },
    /// `KNAPSEC_RING_KERNEL` names no kernel, or one this CPU cannot run.
    #[error("KNAPSEC_RING_KERNEL={value:?}: {reason}")]
    KernelRequest {
        /// The variable's value.
        value: String,
        /// Why it is not obeyed.
        reason: String,
    },
}

impl RingError {
    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        RingError::Invalid {
            op,
            message: message.into(),
        }
    }
}
