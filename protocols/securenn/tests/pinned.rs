//! The transcript of fixed-key runs is pinned: every message each party sends and what the
//! client learns, hashed, for a few networks under exact and approximate DReLU. Faster
//! kernels and a different memory schedule must leave it unchanged (the same PRG streams, the
//! same draws); a change of this hash is a change of the protocol's randomness or messages
//! and must be deliberate.

use knapsec_core::backend::{PartyOutput, SessionKeys};
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, random_weights};
use knapsec_core::transport::{Role, Transport, TransportError};
use knapsec_net::{MemoryTransport, memory_network};
use knapsec_securenn::ctx::{Ctx, InferenceKeys};
use knapsec_securenn::{DreluMode, Options, Plan, Reveal, Session, nets};

/// A transport that hashes what its party sends.
struct Hashing {
    inner: MemoryTransport,
    hash: blake3::Hasher,
    /// The largest message sent.
    largest: usize,
}

impl Transport for Hashing {
    fn role(&self) -> Role {
        self.inner.role()
    }

    fn send(&mut self, to: Role, msg: Vec<u8>) -> Result<(), TransportError> {
        self.hash.update(&[to as u8]);
        self.hash.update(&(msg.len() as u64).to_le_bytes());
        self.hash.update(&msg);
        self.largest = self.largest.max(msg.len());
        self.inner.send(to, msg)
    }

    fn recv(&mut self, from: Role) -> Result<Vec<u8>, TransportError> {
        self.inner.recv(from)
    }
}

/// Per-inference keys as the protocol derived them from a fixed client nonce when these
/// transcripts were pinned, so that the pin covers messages and PRG draws (the derivation
/// from every party's contribution is tested in `tests/backend.rs`).
fn pinned_inference_keys(session: &[Option<[u8; 32]>; 3]) -> InferenceKeys {
    InferenceKeys(session.map(|k| {
        k.map(|k| {
            let mut h = blake3::Hasher::new_keyed(&k);
            h.update(b"knapsec-securenn-inference-v1");
            h.update(&[9; 16]);
            *h.finalize().as_bytes()
        })
    }))
}

/// One inference with fixed session keys and nonce: the hash of the three parties'
/// messages and of the client's output.
fn transcript(model: &SecureModel, weights: &ModelWeights, options: Options) -> String {
    let keys = SessionKeys {
        client_server: Some([11; 32]),
        client_helper: Some([22; 32]),
        server_helper: Some([33; 32]),
        private: [0; 32],
        contributions: Default::default(),
    };
    let [c, h, w] = model.input_shape();
    let mut prg = knapsec_ring::Prg::new(&[5; 32], "pinned-input");
    let x: Vec<f32> = (0..c * h * w)
        .map(|_| (prg.next_u64() >> 11) as f32 / (1u64 << 53) as f32 * 4.0 - 2.0)
        .collect();
    let parts: Vec<(blake3::Hash, PartyOutput, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = memory_network()
            .into_iter()
            .zip(Role::ALL)
            .map(|(t, role)| {
                let (keys, x) = (&keys, &x);
                s.spawn(move || {
                    let mut t = Hashing {
                        inner: t,
                        hash: blake3::Hasher::new(),
                        largest: 0,
                    };
                    let w = (role == Role::Server).then_some(weights);
                    let mut session = Session::new(role, model, w, options).unwrap();
                    let out = {
                        let mut ctx = Ctx::new(role, &mut t, keys);
                        session.setup(&mut ctx).unwrap();
                        ctx.set_inference(&pinned_inference_keys(ctx.session_keys()));
                        let pre = session.offline(&mut ctx).unwrap();
                        let input = (role == Role::Client).then_some(&x[..]);
                        session.online(&mut ctx, pre, input).unwrap()
                    };
                    (t.hash.finalize(), out, t.largest)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = blake3::Hasher::new();
    // No message is larger than the plan's bound, which a deployment makes its frame limit.
    let bound = Plan::new(model, options).unwrap().max_message_bytes(model);
    let largest = parts.iter().map(|p| p.2).max().unwrap() as u64;
    assert!(
        largest <= bound,
        "a message of {largest} bytes, bound {bound}"
    );
    eprintln!("largest message {largest} bytes, plan bound {bound}");
    for (h, _, _) in &parts {
        all.update(h.as_bytes());
    }
    match &parts[0].1 {
        PartyOutput::Logits(v) => v.iter().for_each(|f| {
            all.update(&f.to_le_bytes());
        }),
        PartyOutput::Labels(l) => l.iter().for_each(|v| {
            all.update(&v.to_le_bytes());
        }),
        PartyOutput::Nothing => panic!("the client learns an output"),
    }
    all.finalize().to_hex()[..16].to_string()
}

fn misc() -> (SecureModel, ModelWeights) {
    let mut g = GraphBuilder::new("misc", 12, [3, 8, 8]);
    let c = knapsec_plain::cases::misc_trunk(&mut g);
    let c = g
        .conv("conv", c, ConvSpec::square(6, 3, 1, 1), Some("bn"))
        .unwrap();
    let mut blocks = knapsec_plain::cases::mixed_blocks();
    blocks[5] = BlockSize::Patch { h: 4, w: 4 };
    g.block_relu("relu", c, blocks).unwrap();
    let (m, _) = g.finish(OutputKind::Segmentation).unwrap();
    let w = random_weights(&m, 3);
    (m, w)
}

#[test]
fn transcripts_are_pinned() {
    let exact = Options::default();
    let approx = Options {
        drelu: DreluMode::Approx {
            bits: 16,
            lsb_ignored: 3,
        },
        ..Options::default()
    };
    let label = Options {
        reveal: Reveal::Label,
        ..Options::default()
    };
    let (m, w) = misc();
    let r18 = nets::resnet18_cifar(8, 10, None).unwrap();
    let r18w = random_weights(&r18, 4);
    let got = [
        transcript(&m, &w, exact),
        transcript(&m, &w, approx),
        transcript(&m, &w, label),
        transcript(&r18, &r18w, exact),
        transcript(&r18, &r18w, approx),
    ];
    // Computed with the byte-by-byte draws and scalar PrivateCompare these kernels replaced.
    // The first three changed once, on purpose, when ReLU6's second half (`x − 6`) began to
    // share the first half's masks and opening (one opened value per element instead of
    // two, equally secure: `x − 6 + m` is `x + m` minus a public constant); the ResNet-18
    // ones (no ReLU6) did not. All five changed once more, on purpose, when PrivateCompare's
    // rotations began to be drawn from one keystream byte each (rejection below the largest
    // multiple of `n`, uniform as before) instead of one 64-bit element.
    let want = [
        "e459c9caee444808",
        "358b822e64571488",
        "b8c75d01bdfb0c73",
        "b9453537b16bfb8c",
        "7b687653e55e3f34",
    ];
    assert_eq!(got, want);
}
