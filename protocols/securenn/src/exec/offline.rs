//! A party's session and the input-independent phases (DESIGN §5, digest §6.4, §6.7): the
//! server's weights prepared once, the per-session set-up (the server sends the masked weights
//! `F = W − B` to the helper, [`crate::linear`]) and the per-inference offline phase (linear
//! masks and the helper's `conv(A, F)`, selection masks and PrivateCompare bit shares,
//! [`crate::select`]).

use super::plan::{NodePlan, Plan};
use crate::backend::SessionCache;
use crate::ctx::{Ctx, stream};
use crate::error::{Result, SecureNnError};
use crate::linear::{self, HelperWeights, LayerWeights, LinearPre};
use crate::options::Options;
use crate::select::{self, SelectPre};
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::transport::Role;
use knapsec_ring::RingTensor;
use std::sync::{Arc, Mutex};

/// One party's preprocessing of one inference.
#[derive(Debug)]
pub struct Preprocessing {
    /// Per node: a linear layer's masks.
    pub(super) linear: Vec<Option<LinearPre>>,
    /// Per node: its selection batches (one, or one per max-pool level).
    pub(super) select: Vec<Vec<SelectPre>>,
    /// The argmax's selection batches, one per level.
    pub(super) argmax: Vec<SelectPre>,
}

/// One party's side of a session: the plan, and the server's weights or the helper's masked
/// weights.
#[derive(Debug)]
pub struct Session<'m> {
    /// The party.
    pub role: Role,
    pub(super) model: &'m SecureModel,
    pub(super) plan: Plan,
    /// Server: weights (prepared for the session) and biases per node.
    pub(super) weights: Vec<Option<(LayerWeights, Option<Vec<u64>>)>>,
    /// Helper: `F = W − B` per node, after setup.
    masked: Vec<Option<HelperWeights>>,
}

impl<'m> Session<'m> {
    /// A session for `role`; the server must pass its weights.
    pub fn new(
        role: Role,
        model: &'m SecureModel,
        weights: Option<&ModelWeights>,
        options: Options,
    ) -> Result<Self> {
        let plan = Plan::new(model, options)?;
        let mut w = vec![None; model.nodes.len()];
        if role == Role::Server {
            let weights = weights.ok_or_else(|| SecureNnError::Input {
                role,
                message: "the server needs the weights".into(),
            })?;
            weights
                .check_against(model)
                .map_err(|e| SecureNnError::Input {
                    role,
                    message: e.to_string(),
                })?;
            for (i, n) in plan.nodes().iter().enumerate() {
                if let NodePlan::Linear(l) = n {
                    let bad = |e: knapsec_core::CoreError| SecureNnError::Input {
                        role,
                        message: e.to_string(),
                    };
                    let t = weights.get(&l.weight).map_err(bad)?;
                    let wt = RingTensor::from_i64(&l.w_dims, &t.data)
                        .and_then(|w| LayerWeights::new(l, w))
                        .map_err(|e| SecureNnError::Ring {
                            role,
                            layer: model.nodes[i].name.clone(),
                            source: e,
                        })?;
                    let b = match &l.bias {
                        Some(b) => Some(
                            weights
                                .get(b)
                                .map_err(bad)?
                                .data
                                .iter()
                                .map(|&v| v as u64)
                                .collect(),
                        ),
                        None => None,
                    };
                    w[i] = Some((wt, b));
                }
            }
        }
        Ok(Session {
            role,
            model,
            plan,
            weights: w,
            masked: vec![None; model.nodes.len()],
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m SecureModel {
        self.model
    }

    /// The server's weights (prepared for the session) and bias of node `node`; `None` on the
    /// other parties and for nodes without weights.
    pub fn layer_weights(&self, node: usize) -> Option<&(LayerWeights, Option<Vec<u64>>)> {
        self.weights.get(node)?.as_ref()
    }

    /// The helper's masked weights per node (after setup).
    pub fn masked(&self) -> &[Option<HelperWeights>] {
        &self.masked
    }

    /// Installs masked weights kept from an earlier setup of the same session (helper).
    pub fn set_masked(&mut self, masked: Vec<Option<HelperWeights>>) {
        self.masked = masked;
    }

    /// True if the helper holds the masked weights (setup done).
    pub fn is_set_up(&self) -> bool {
        self.plan
            .nodes()
            .iter()
            .zip(&self.masked)
            .all(|(n, m)| !matches!(n, NodePlan::Linear(_)) || m.is_some())
    }

    /// The per-session setup: the server sends `F = W − B` of every linear layer to the helper.
    pub fn setup(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        for (i, n) in self.plan.nodes().iter().enumerate() {
            let NodePlan::Linear(l) = n else { continue };
            ctx.scope(&self.model.nodes[i].name, "setup");
            match self.role {
                Role::Server => linear::setup_server(
                    ctx,
                    l,
                    &self.weights[i].as_ref().expect("server weights").0,
                )?,
                Role::Helper => self.masked[i] = Some(linear::setup_helper(ctx, l)?),
                Role::Client => {}
            }
        }
        Ok(())
    }

    /// The per-session setup unless the helper still holds the masked weights of session
    /// `id` in `cache`: the helper tells the server (1 byte) whether it does, the server sends
    /// them if not, and the helper keeps what it receives.
    pub fn setup_cached(
        &mut self,
        ctx: &mut Ctx<'_>,
        cache: &Mutex<SessionCache>,
        id: [u8; 32],
    ) -> Result<()> {
        ctx.scope("session", "setup");
        let role = self.role;
        let poisoned = || SecureNnError::Thread {
            role,
            message: "cache poisoned".into(),
        };
        match role {
            Role::Helper => {
                let cached = cache.lock().map_err(|_| poisoned())?.get(&id);
                ctx.send_bytes(Role::Server, vec![u8::from(cached.is_some())])?;
                match cached {
                    Some(m) => self.set_masked(m.as_ref().clone()),
                    None => {
                        self.setup(ctx)?;
                        let masked = Arc::new(self.masked.clone());
                        cache.lock().map_err(|_| poisoned())?.put(id, masked);
                    }
                }
            }
            Role::Server => {
                let flag = ctx.recv_bytes(Role::Helper, 1)?;
                if flag[0] == 0 {
                    self.setup(ctx)?;
                }
            }
            Role::Client => {}
        }
        Ok(())
    }

    /// The offline phase of one inference (needs the nonce set in `ctx`).
    pub fn offline(&self, ctx: &mut Ctx<'_>) -> Result<Preprocessing> {
        let n = self.plan.nodes().len();
        let mut pre = Preprocessing {
            linear: Vec::with_capacity(n),
            select: Vec::with_capacity(n),
            argmax: Vec::new(),
        };
        for (i, node) in self.plan.nodes().iter().enumerate() {
            let name = &self.model.nodes[i].name;
            let mut lin = None;
            let mut sel = Vec::new();
            match node {
                NodePlan::Linear(l) => {
                    ctx.scope(name, "linear");
                    lin = Some(linear::offline(ctx, l, self.masked[i].as_ref())?);
                }
                NodePlan::BlockRelu { spec: Some(s), .. } | NodePlan::Relu6 { spec: s } => {
                    ctx.scope(name, "drelu");
                    sel.push(select::offline(ctx, s, stream(i, 0))?);
                }
                NodePlan::MaxPool { tree, .. } => {
                    ctx.scope(name, "drelu");
                    sel = tree.offline(ctx, i)?;
                }
                _ => {}
            }
            pre.linear.push(lin);
            pre.select.push(sel);
        }
        ctx.scope("output", "drelu");
        if let Some(t) = self.plan.argmax() {
            pre.argmax = t.offline(ctx, n)?;
        }
        Ok(pre)
    }
}
