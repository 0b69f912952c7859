//! The graph executor of the `fss` backend: the public plan of a model (the same on all
//! three parties; `securenn`'s, [`plan`]), the per-session setup and the offline and online
//! phases of one inference ([`session`]), one walk over the graph (`walk`, private) and the
//! linear layers (`linear`, private) (DESIGN §5).
//!
//! **Invariant.** Every value of the graph is additively shared over Z_2^64 between client
//! and server, and the client's share is input-independent and known to the helper: the
//! client and the helper compute the client's shares of the whole graph in the offline phase
//! (a "shadow" run), the server computes its shares online. This is what makes linear
//! layers free online and halves every opening:
//!
//! * **Input.** The client sends `X + A` to the server (`A` from the client–helper PRG);
//!   shares `(−A, X + A)`.
//! * **Linear layers** (convolution with folded BatchNorm, fully connected), server's
//!   weights `W`, session masks `B` / `F = W − B` as in `securenn` ([`knapsec_securenn::linear`],
//!   whose setup this backend reuses). Offline the helper, who knows the client's input
//!   share `X_c`, sends the client `conv(X_c, F) + R`; the client forms
//!   `Y_c = conv(X_c, B) + conv(X_c, F) + R = conv(X_c, W) + R`, truncates it (arithmetic
//!   shift by `f`, SecureML style, the same rule and error bound as `securenn`) and sends the
//!   server `⌊Y_c⌋ + κ`. Online the server computes `⌊conv(X_s, W) − R⌋ + bias + ⌊Y_c⌋ + κ`;
//!   the client's share is `−κ`. No online message.
//! * **ReLU family** (ReLU, block ReLU, ReLU6, max pooling, argmax): the gate of
//!   [`crate::gate`], one flight each way.
//! * **Local ops** (add, concat, broadcast, average and global average pooling by floor
//!   division of each share): the helper repeats the client's arithmetic.
//! * **Output.** The server sends its share of the logits (or of the label, after the secure
//!   argmax) to the client.
//!
//! The fixed-point semantics of every op are `securenn`'s (see `knapsec_securenn::exec`):
//! same truncation, same window of the approximate DReLU, same tie rule in max pooling and
//! argmax; the `plain` oracle is the reference.

mod linear;
pub mod plan;
pub mod session;
mod walk;

pub use plan::{ClosedForm, Plan};
pub use session::{Preprocessing, Session};
