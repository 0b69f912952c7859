//! Fuzzes the parsing of the session messages a peer sends before and between inferences
//! (hello, control): arbitrary bytes must give an error, never a panic, and whatever parses
//! must serialise back to something that parses to the same value.
#![no_main]

use knapsec_core::Role;
use knapsec_runtime::handshake::{Control, Hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Hello::from_bytes(data, Role::Client) {
        assert_eq!(Hello::from_bytes(&h.to_bytes(), Role::Client).unwrap(), h);
    }
    if let Ok(c) = Control::from_bytes(data, Role::Client) {
        assert_eq!(Control::from_bytes(&c.to_bytes(), Role::Client).unwrap(), c);
    }
});
