//! One party's session of the `fss` backend and its phases (DESIGN §5): the per-session setup
//! (`securenn`'s: the server sends the masked weights `F = W − B` to the helper), the offline
//! phase of one inference (the helper deals the gates' keys and masks, client and helper run
//! the client's shadow shares), the online phase (the server runs its shares) and the reveal.

use super::walk::{Phase, walk};
use crate::error::Result;
use crate::gate::GatePre;
use knapsec_core::backend::PartyOutput;
use knapsec_core::transport::Role;
use knapsec_ring::Prg;
use knapsec_securenn::SecureNnError;
use knapsec_securenn::ctx::Ctx;
use knapsec_securenn::exec::ops;

/// One party's preprocessing of one inference.
#[derive(Debug, Default)]
pub struct Preprocessing {
    pub(super) gates: Vec<GatePre>,
    /// Server: the client's truncated, masked linear shares `⌊Y_c⌋ + κ` per node.
    pub(super) linear: Vec<Option<Vec<u64>>>,
}

impl Preprocessing {
    /// Bytes this party holds between the phases.
    pub fn held_bytes(&self) -> u64 {
        self.gates.iter().map(GatePre::held_bytes).sum::<u64>()
            + self
                .linear
                .iter()
                .flatten()
                .map(|v| 8 * v.len() as u64)
                .sum::<u64>()
    }

    /// Bytes of DCF keys this party holds.
    pub fn key_bytes(&self) -> u64 {
        self.gates.iter().map(GatePre::key_bytes).sum()
    }
}

/// One party's side of a session: `securenn`'s session state (the shared plan, the server's
/// prepared weights, the helper's masked weights), whose setup this backend reuses.
#[derive(Debug)]
pub struct Session<'m> {
    /// The party.
    pub role: Role,
    pub(super) shared: knapsec_securenn::Session<'m>,
}

impl<'m> From<knapsec_securenn::Session<'m>> for Session<'m> {
    /// This backend's session over `securenn`'s session state (made with
    /// [`knapsec_securenn::Session::new`]: the server passes its weights).
    fn from(shared: knapsec_securenn::Session<'m>) -> Self {
        Session {
            role: shared.role,
            shared,
        }
    }
}

impl<'m> Session<'m> {
    /// The plan.
    pub fn plan(&self) -> &knapsec_securenn::Plan {
        self.shared.plan()
    }

    /// `securenn`'s session state: the per-session setup ([`knapsec_securenn::Session::setup`],
    /// [`knapsec_securenn::Session::setup_cached`]) and the helper's masked weights.
    pub fn shared_mut(&mut self) -> &mut knapsec_securenn::Session<'m> {
        &mut self.shared
    }

    /// The offline phase of one inference (per-inference keys set in `ctx`); the helper
    /// passes its private generator (fresh per inference).
    pub fn offline(&self, ctx: &mut Ctx<'_>, private: Option<&mut Prg>) -> Result<Preprocessing> {
        let mut pre = Preprocessing {
            gates: Vec::new(),
            linear: vec![None; self.shared.model().nodes.len()],
        };
        if self.role == Role::Helper && private.is_none() {
            return Err(SecureNnError::Input {
                role: Role::Helper,
                message: "the dealer needs its private generator".into(),
            }
            .into());
        }
        walk(self, ctx, Phase::Offline, &mut pre, None, private)?;
        Ok(pre)
    }

    /// The online phase: the client passes its input (`C·H·W` reals); returns what this party
    /// learns.
    pub fn online(
        &self,
        ctx: &mut Ctx<'_>,
        pre: &mut Preprocessing,
        input: Option<&[f32]>,
    ) -> Result<PartyOutput> {
        if self.role == Role::Helper {
            return Ok(PartyOutput::Nothing);
        }
        let share = walk(self, ctx, Phase::Online, pre, input, None)?;
        let labels = self.plan().argmax().is_some();
        Ok(ops::reveal(
            ctx,
            &share,
            labels,
            self.shared.model().frac_bits,
        )?)
    }
}
