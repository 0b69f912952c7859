//! The `plain` secure-backend plugin: the three-party job shape around [`crate::evaluate`],
//! with **no privacy** (for tests, demos and as the reference the secure backends are
//! compared with through the same driver).
//!
//! How it fits [`PartyJob`]: the server sends its fixed-point weights *in the clear* to the
//! client over the transport, one message per weight tensor, in the order the graph first
//! names them (node order, weight before bias), each the tensor's `i64` values little-endian;
//! the client checks every size against the public graph, evaluates the model on its input
//! and returns the logits or labels (option `output`). The helper does nothing. So
//! `knapsec simulate --backend plain` runs the same three-party driver as a secure backend,
//! and a caller that holds everything uses [`crate::evaluate`] directly.
//!
//! Options (RON, all optional): `(output: Logits)` (default) or `(output: Labels)`.

use crate::error::{PlainError, Result};
use crate::eval::evaluate;
use knapsec_core::backend::{BackendError, PartyJob, PartyOutput, SecureBackend};
use knapsec_core::graph::{FixedTensor, ModelWeights, Op, SecureModel};
use knapsec_core::registry::BackendRegistration;
use knapsec_core::transport::Role;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What the client returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputChoice {
    /// The output logits, decoded to `f32`.
    #[default]
    Logits,
    /// The label (classification) or label map (segmentation).
    Labels,
}

/// Options of the `plain` backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlainOptions {
    /// Which output the client learns.
    pub output: OutputChoice,
}

impl PlainOptions {
    /// Parses RON text; empty text means the defaults.
    pub fn parse(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(PlainOptions::default());
        }
        ron::from_str(text)
            .map_err(|e| PlainError::Options(format!("{e} (expected e.g. `(output: Labels)`)")))
    }

    /// The canonical RON form.
    pub fn canonical(&self) -> String {
        ron::to_string(self).expect("options always serialise")
    }
}

/// The `plain` backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainBackend;

/// Names of the weight tensors of `model`, in the order they travel.
pub fn weight_names(model: &SecureModel) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for node in &model.nodes {
        let (w, b) = match &node.op {
            Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => (weight, bias),
            _ => continue,
        };
        for n in std::iter::once(w).chain(b.iter()) {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names
}

fn transport_err(
    context: &str,
) -> impl Fn(knapsec_core::transport::TransportError) -> PlainError + '_ {
    move |source| PlainError::Transport {
        context: context.to_string(),
        source,
    }
}

fn to_backend(role: Role, e: PlainError) -> BackendError {
    match e {
        PlainError::Options(m) => BackendError::Options(m),
        PlainError::Transport { context, source } => BackendError::Transport {
            layer: context,
            source,
        },
        other => BackendError::Party {
            role,
            message: other.to_string(),
        },
    }
}

fn run_party(job: PartyJob<'_>) -> Result<PartyOutput> {
    let options = PlainOptions::parse(job.options)?;
    let model = job.model;
    model.validate()?;
    let names = weight_names(model);
    match job.role {
        Role::Helper => Ok(PartyOutput::Nothing),
        Role::Server => {
            let weights = job
                .weights
                .ok_or_else(|| PlainError::Input("the server holds no weights".into()))?;
            weights.check_against(model)?;
            job.transport.set_scope("weights", "plain");
            for name in &names {
                let t = weights.get(name)?;
                let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                job.transport
                    .send(Role::Client, bytes)
                    .map_err(transport_err("sending the weights"))?;
            }
            Ok(PartyOutput::Nothing)
        }
        Role::Client => {
            let input = job
                .input
                .ok_or_else(|| PlainError::Input("the client holds no input".into()))?;
            job.transport.set_scope("weights", "plain");
            let mut weights = ModelWeights::default();
            for name in &names {
                let bytes = job
                    .transport
                    .recv(Role::Server)
                    .map_err(transport_err("receiving the weights"))?;
                if bytes.len() % 8 != 0 {
                    return Err(PlainError::Message(format!(
                        "weight {name:?}: {} bytes is not a whole number of i64",
                        bytes.len()
                    )));
                }
                let data: Vec<i64> = bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                weights.tensors.insert(
                    name.clone(),
                    FixedTensor {
                        shape: vec![data.len()],
                        data,
                    },
                );
            }
            weights
                .check_against(model)
                .map_err(|e| PlainError::Message(format!("weights from the server: {e}")))?;
            job.transport.set_scope("output", "plain");
            let out = evaluate(model, &weights, input)?;
            Ok(match options.output {
                OutputChoice::Logits => PartyOutput::Logits(out.logits()),
                OutputChoice::Labels => PartyOutput::Labels(out.labels()),
            })
        }
    }
}

impl SecureBackend for PlainBackend {
    fn name(&self) -> &str {
        "plain"
    }

    fn description(&self) -> &str {
        "cleartext fixed-point evaluation (no privacy: the server sends its weights to the client); the oracle of secure backends"
    }

    /// The server sends its weights to the client in the clear.
    fn is_private(&self) -> bool {
        false
    }

    fn version(&self) -> String {
        concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")).to_string()
    }

    fn canonical_options(&self, options: &str) -> std::result::Result<String, BackendError> {
        PlainOptions::parse(options)
            .map(|o| o.canonical())
            .map_err(|e| to_backend(Role::Client, e))
    }

    fn run(&self, job: PartyJob<'_>) -> std::result::Result<PartyOutput, BackendError> {
        let role = job.role;
        run_party(job).map_err(|e| to_backend(role, e))
    }
}

inventory::submit! {
    BackendRegistration { name: "plain", provider: "knapsec-plain", make: || Arc::new(PlainBackend) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::backend::SessionKeys;
    use knapsec_core::graph::{Node, OutputKind};
    use knapsec_core::transport::{Transport, TransportError};
    use std::collections::VecDeque;
    use std::sync::{Arc as StdArc, Mutex};

    /// Messages in flight per (sender, receiver).
    type Queues = std::collections::BTreeMap<(Role, Role), VecDeque<Vec<u8>>>;

    /// A single-threaded loopback: every role's outbox is shared.
    #[derive(Clone, Default)]
    struct Loop {
        queues: StdArc<Mutex<Queues>>,
    }

    struct End {
        me: Role,
        net: Loop,
    }

    impl Transport for End {
        fn role(&self) -> Role {
            self.me
        }
        fn send(&mut self, to: Role, msg: Vec<u8>) -> std::result::Result<(), TransportError> {
            self.net
                .queues
                .lock()
                .unwrap()
                .entry((self.me, to))
                .or_default()
                .push_back(msg);
            Ok(())
        }
        fn recv(&mut self, from: Role) -> std::result::Result<Vec<u8>, TransportError> {
            self.net
                .queues
                .lock()
                .unwrap()
                .get_mut(&(from, self.me))
                .and_then(|q| q.pop_front())
                .ok_or(TransportError::Disconnected {
                    peer: from,
                    context: String::new(),
                })
        }
    }

    fn tiny() -> (SecureModel, ModelWeights) {
        let nodes = vec![
            Node {
                name: "input".into(),
                op: Op::Input,
                inputs: vec![],
                shape: [2, 1, 1],
            },
            Node {
                name: "fc".into(),
                op: Op::Linear {
                    weight: "w".into(),
                    bias: Some("b".into()),
                },
                inputs: vec![0],
                shape: [3, 1, 1],
            },
        ];
        let model = SecureModel::new("t", 8, OutputKind::Classification, nodes);
        let w = ModelWeights::default()
            .with("w", vec![3, 2], vec![256, 0, 0, 256, -256, 0])
            .with("b", vec![3], vec![0, 128, 0]);
        (model, w)
    }

    fn job<'a>(
        role: Role,
        model: &'a SecureModel,
        w: Option<&'a ModelWeights>,
        input: Option<&'a [f32]>,
        options: &'a str,
        keys: &'a SessionKeys,
        t: &'a mut End,
    ) -> PartyJob<'a> {
        PartyJob {
            role,
            model,
            weights: w,
            input,
            options,
            keys,
            inference: 0,
            transport: t,
        }
    }

    #[test]
    fn says_it_is_not_private() {
        assert!(!PlainBackend.is_private());
        assert!(PlainBackend.version().starts_with("knapsec-plain "));
    }

    #[test]
    fn three_parties_give_the_client_the_plain_result() {
        let (model, w) = tiny();
        let keys = SessionKeys::default();
        let net = Loop::default();
        let input = [1.0f32, 2.0];
        for options in ["", "(output: Labels)"] {
            let mut server = End {
                me: Role::Server,
                net: net.clone(),
            };
            let mut client = End {
                me: Role::Client,
                net: net.clone(),
            };
            let mut helper = End {
                me: Role::Helper,
                net: net.clone(),
            };
            let b = PlainBackend;
            assert_eq!(
                b.run(job(
                    Role::Server,
                    &model,
                    Some(&w),
                    None,
                    options,
                    &keys,
                    &mut server
                ))
                .unwrap(),
                PartyOutput::Nothing
            );
            assert_eq!(
                b.run(job(
                    Role::Helper,
                    &model,
                    None,
                    None,
                    options,
                    &keys,
                    &mut helper
                ))
                .unwrap(),
                PartyOutput::Nothing
            );
            let out = b
                .run(job(
                    Role::Client,
                    &model,
                    None,
                    Some(&input),
                    options,
                    &keys,
                    &mut client,
                ))
                .unwrap();
            let want = evaluate(&model, &w, &input).unwrap();
            if options.is_empty() {
                assert_eq!(out, PartyOutput::Logits(want.logits()));
                assert_eq!(want.logits(), vec![1.0, 2.5, -1.0]);
            } else {
                assert_eq!(out, PartyOutput::Labels(vec![1]));
            }
        }
    }

    #[test]
    fn options_and_missing_parts_are_clear_errors() {
        let b = PlainBackend;
        assert_eq!(b.canonical_options("").unwrap(), "(output:Logits)");
        assert_eq!(
            b.canonical_options("(output: Labels)").unwrap(),
            "(output:Labels)"
        );
        assert!(matches!(
            b.canonical_options("(drelu: Exact)"),
            Err(BackendError::Options(_))
        ));
        let (model, w) = tiny();
        let keys = SessionKeys::default();
        let mut t = End {
            me: Role::Server,
            net: Loop::default(),
        };
        let e = b
            .run(job(Role::Server, &model, None, None, "", &keys, &mut t))
            .unwrap_err();
        assert!(e.to_string().contains("no weights"), "{e}");
        // A server that sends a truncated tensor: the client names the tensor.
        let net = Loop::default();
        let mut s = End {
            me: Role::Server,
            net: net.clone(),
        };
        s.send(Role::Client, vec![0; 16]).unwrap();
        s.send(Role::Client, vec![0; 24]).unwrap();
        let mut c = End {
            me: Role::Client,
            net,
        };
        let e = b
            .run(job(
                Role::Client,
                &model,
                None,
                Some(&[1.0, 2.0]),
                "",
                &keys,
                &mut c,
            ))
            .unwrap_err();
        assert!(e.to_string().contains("\"w\""), "{e}");
        let _ = w;
    }

    #[test]
    fn weight_order_is_graph_order() {
        let (model, _) = tiny();
        assert_eq!(weight_names(&model), vec!["w".to_string(), "b".to_string()]);
    }
}
