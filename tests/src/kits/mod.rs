//! Conformance kits: one per plugin trait (DESIGN §4, §6). Each kit takes any
//! implementation, exercises the trait's contract and returns `Err` with a message naming the
//! plugin and what it got wrong. Kits are run against every built-in and every dynamic plugin
//! the tests load (`tests/kits.rs`); authors of a new implementation call the kit from a test:
//!
//! ```ignore
//! knapsec_tests::kits::arch::check(&MyArch, &ArchOptions::default()).unwrap();
//! ```
//!
//! Each kit also has negative tests (a deliberately broken implementation must fail it), so
//! that a kit cannot quietly pass everything.

pub mod arch;
pub mod backend;
pub mod batch;
pub mod strategy;

/// The result of a kit: `Err` says which plugin broke which rule.
pub type KitResult = Result<(), String>;

/// Fails with `message` unless `cond` holds.
pub(crate) fn ensure(cond: bool, message: impl FnOnce() -> String) -> KitResult {
    if cond { Ok(()) } else { Err(message()) }
}

/// Checks a plugin name: non-empty, no whitespace, no `:` (plugin-set files use `KIND:NAME`).
pub(crate) fn check_name(kind: &str, name: &str) -> KitResult {
    ensure(!name.is_empty(), || {
        format!("{kind} plugin with an empty name")
    })?;
    ensure(!name.chars().any(|c| c.is_whitespace() || c == ':'), || {
        format!("{kind} plugin {name:?}: names may not contain whitespace or ':'")
    })
}
