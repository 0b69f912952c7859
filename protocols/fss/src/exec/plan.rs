//! The `fss` backend's plan of a model: `securenn`'s plan ([`knapsec_securenn::Plan`]: the
//! window per DReLU site, the linear layers' shapes, the block groups, the tournaments of max
//! pooling and the argmax), with this backend's closed-form traffic and key sizes over it
//! (DESIGN §5: every backend states its byte counts in closed form).
//!
//! The planning is `securenn`'s because its output is made of `securenn`'s parts that this
//! backend runs too: the linear layers' session masks ([`knapsec_securenn::linear`]) and the
//! selection batches ([`knapsec_securenn::select::SelectSpec`]) that size every gate.

use crate::error::Result;
use crate::gate;
use knapsec_core::graph::SecureModel;
use knapsec_securenn::Options;
use knapsec_securenn::exec::NodePlan;

/// The public plan of a model under some options (the same on all three parties).
#[derive(Clone, Debug)]
pub struct Plan(knapsec_securenn::Plan);

/// Closed-form traffic of one inference and of a session's setup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedForm {
    /// Once per session: the server's masked weights to the helper.
    pub setup: u64,
    /// Offline per inference (the parties' contributions included).
    pub offline: u64,
    /// Online per inference (input and output included).
    pub online: u64,
    /// DCF key bytes one of client and server receives and holds per inference (the
    /// corrections; root seeds come from the pairwise PRGs).
    pub key_bytes: u64,
    /// Bytes of preprocessing client and server hold between the phases (keys, masks and the
    /// client's linear shares at the server), summed over both; the helper holds none.
    pub held_bytes: u64,
    /// Causal rounds of the online phase: the input, two per gate (the gates run one after
    /// the other), the reveal.
    pub online_rounds: u64,
}

impl Plan {
    /// Plans `model` under `options`; refuses what this backend cannot run (the same graphs
    /// as `securenn`).
    pub fn new(model: &SecureModel, options: Options) -> Result<Self> {
        Ok(Plan(knapsec_securenn::Plan::new(model, options)?))
    }

    /// The shared plan.
    pub fn shared(&self) -> &knapsec_securenn::Plan {
        &self.0
    }

    /// The options this plan was made for.
    pub fn options(&self) -> Options {
        self.0.options()
    }

    /// Total DReLUs (sign tests, each a DCF) of one inference, network and argmax.
    pub fn drelus(&self) -> u64 {
        self.0.drelus()
    }

    /// The payload bytes of the largest single message of a session (setup and one
    /// inference), for the deployment's frame cap.
    pub fn max_message(&self, model: &SecureModel) -> u64 {
        let mut m = knapsec_runtime::CONTRIBUTION_LEN as u64;
        for s in self.0.specs() {
            let (px, np) = (s.pixels as u64, s.patches() as u64);
            m = m
                .max(gate::key_bytes(s))
                .max(8 * px + np.div_ceil(8))
                .max(8 * np);
        }
        for n in self.0.nodes() {
            if let NodePlan::Linear(l) = n {
                m = m.max(l.setup_bytes()).max(l.offline_bytes());
            }
        }
        let [ic, ih, iw] = model.input_shape().map(u64::from);
        let [oc, oh, ow] = model.output_shape().map(u64::from);
        m.max(8 * ic * ih * iw).max(8 * oc * oh * ow)
    }

    /// Closed-form bytes of a session's setup and of one inference's phases (the helper's
    /// one-byte "setup needed" flag excluded, as in `securenn`).
    pub fn closed_form(&self, model: &SecureModel) -> ClosedForm {
        let mut c = ClosedForm {
            offline: 6 * knapsec_runtime::CONTRIBUTION_LEN as u64,
            ..ClosedForm::default()
        };
        c.online_rounds = 2;
        for s in self.0.specs() {
            c.online_rounds += 2;
            let (off, on) = gate::bytes(s);
            c.offline += off;
            c.online += on;
            c.key_bytes += gate::key_bytes(s);
            c.held_bytes += gate::held_bytes(s);
        }
        for n in self.0.nodes() {
            if let NodePlan::Linear(l) = n {
                c.setup += l.setup_bytes();
                c.offline += 2 * l.offline_bytes();
                c.held_bytes += l.offline_bytes();
            }
        }
        let [ic, ih, iw] = model.input_shape().map(u64::from);
        let [oc, oh, ow] = model.output_shape().map(u64::from);
        c.online += 8 * ic * ih * iw;
        c.online += 8 * if self.0.argmax().is_none() {
            oc * oh * ow
        } else {
            oh * ow
        };
        c
    }
}
