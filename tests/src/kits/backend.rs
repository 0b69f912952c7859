//! The secure-backend kit ([`knapsec_core::SecureBackend`], DESIGN §5).
//!
//! Rules checked by [`check`] (the protocol engineers extend this kit with end-to-end runs
//! against `knapsec-plain`):
//! 1. a usable name and a non-empty description;
//! 2. the default options (empty text) are accepted, and their canonical form is a fixed
//!    point (canonicalising it again gives the same text), so both parties of a handshake
//!    compare equal bytes;
//! 3. options that are not RON are refused with `BackendError::Options`.

use super::{KitResult, check_name, ensure};
use knapsec_core::backend::{BackendError, SecureBackend};

/// Runs every rule of this kit.
pub fn check(backend: &dyn SecureBackend) -> KitResult {
    let name = backend.name();
    check_name("secure-backend", name)?;
    ensure(!backend.description().trim().is_empty(), || {
        format!("backend {name:?}: empty description")
    })?;
    let canonical = backend
        .canonical_options("")
        .map_err(|e| format!("backend {name:?}: the default options are refused: {e}"))?;
    let again = backend.canonical_options(&canonical).map_err(|e| {
        format!("backend {name:?}: its own canonical options {canonical:?} are refused: {e}")
    })?;
    ensure(again == canonical, || {
        format!(
            "backend {name:?}: canonical options are not a fixed point: {canonical:?} became {again:?}"
        )
    })?;
    match backend.canonical_options("((( not ron") {
        Err(BackendError::Options(_)) => Ok(()),
        Err(e) => Err(format!(
            "backend {name:?}: malformed options refused with the wrong error: {e}"
        )),
        Ok(c) => Err(format!(
            "backend {name:?}: malformed options accepted as {c:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::backend::{PartyJob, PartyOutput};

    /// Options are a RON unit `()` or a number of bits; `sloppy` accepts anything.
    struct Toy {
        sloppy: bool,
    }

    impl SecureBackend for Toy {
        fn name(&self) -> &str {
            "toy"
        }
        fn description(&self) -> &str {
            "a toy"
        }
        fn canonical_options(&self, options: &str) -> Result<String, BackendError> {
            if options.trim().is_empty() {
                return Ok("16".into());
            }
            match options.trim().parse::<u32>() {
                Ok(bits) => Ok(bits.to_string()),
                Err(_) if self.sloppy => Ok(options.into()),
                Err(e) => Err(BackendError::Options(e.to_string())),
            }
        }
        fn run(&self, _: PartyJob<'_>) -> Result<PartyOutput, BackendError> {
            Err(BackendError::Unsupported("toy".into()))
        }
    }

    #[test]
    fn kit_accepts_a_correct_backend_and_refuses_a_sloppy_one() {
        check(&Toy { sloppy: false }).unwrap();
        let e = check(&Toy { sloppy: true }).unwrap_err();
        assert!(e.contains("malformed options accepted"), "{e}");
    }
}
