//! The party driver: runs one role of a deployment (`knapsec party`), DESIGN §5.
//!
//! A **session** is one client's visit: the client connects to the server and the helper,
//! the server connects to the helper, every connection is authenticated
//! ([`knapsec_net::secure_channel`]) and starts with a hello exchange ([`crate::handshake`]);
//! then the client runs its inputs one after another, alone or in batches (a
//! [`Control::Infer`] or [`Control::Batch`] to both others before each, [`Control::Done`] at
//! the end) and everybody closes cleanly. Server and
//! helper serve sessions one after another, any number of inferences each. Every party drives
//! the backend through its phases: the once-per-session phase at the session's first
//! inference, then each inference's offline and online phases
//! ([`knapsec_core::backend::PartySession`]).
//!
//! Connection directions: client → server, client → helper, server → helper, so the client
//! needs no listening port.
//!
//! **Listening.** Server and helper accept connections on a task of their own that never
//! waits on a peer: every incoming connection is authenticated on its own task, which has
//! [`PRE_AUTH`] for the preamble and first Noise message and the handshake deadline for the
//! hello; at most [`MAX_PENDING_PER_ADDRESS`] unauthenticated connections are held per source
//! address and [`MAX_PENDING`] in all (a new one evicts the oldest if that one has had
//! [`EVICT_AFTER`], else it is closed), and a replayed first
//! handshake message is dropped at once ([`ReplayGuard`]). Only connections whose hello has
//! arrived (so whose peer holds a configured key) reach the session loop, through a queue of
//! [`QUEUE`]. A stranger, an idle socket or a sender of garbage therefore costs a task and a
//! second, never the listener, and never a session.
//!
//! A session that fails (mismatch, a dead party, a timeout, a backend error) is aborted: the
//! failing party tells the others why, everybody stops with an error naming the party and
//! the layer; server and helper log it and serve the next session (or exit non-zero with
//! [`ServeOptions::keep_going`] off). Between two inferences the client may stay idle for the
//! deployment's `idle_s`, not `recv_s`. Text a peer sends (abort reasons) is cleaned with
//! [`knapsec_net::error::peer_text`] before it is logged or shown.

//!
//! The parts: `listen` (the listener and its limits), `link` (one connection: connect, hello,
//! deadlines) and this module (the party and its sessions).

mod link;
mod listen;

pub use listen::{EVICT_AFTER, MAX_PENDING, MAX_PENDING_PER_ADDRESS, PRE_AUTH, QUEUE};

use link::{
    Established, PairKeys, abort_channel, connect_retry, recv_hello, settle, timeout_err,
    wait_ready, within,
};
use listen::{Arrival, Gate, listen};

use crate::batch::{diverged, run_lanes};
use crate::deploy::Deployment;
use crate::handshake::{self, Control, Hello};
use knapsec_core::Role;
use knapsec_core::backend::{PartyOutput, PartySession, SecureBackend, SessionJob, SessionKeys};
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::transport::Transport;
use knapsec_net::error::{NetError, Result, peer_text};
use knapsec_net::frame::FrameKind;
use knapsec_net::metered::{CommReport, Metered};
use knapsec_net::secure_channel::{ReplayGuard, SecureChannel};
use knapsec_net::tcp::TcpTransport;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Per-inference figures of one party (of a whole batch, for the images of a batch).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct InferenceStats {
    /// The inference's index in the session (of the batch's first image).
    pub index: u64,
    /// Images in the inference: 1, or the size of its batch.
    pub images: u64,
    /// Wall-clock time of the inference (the whole batch) at this party.
    pub seconds: f64,
    /// What this party sent; `rounds` are its flights (see [`knapsec_net::metered`]).
    pub comm: CommReport,
}

/// How server and helper serve.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServeOptions {
    /// Stop after this many sessions (successfully if none failed); `None`: serve until
    /// killed.
    pub sessions: Option<u64>,
    /// Log a failed session and wait for the next one instead of exiting with its error.
    pub keep_going: bool,
}

/// A party ready to run: deployment, backend, model, and a tokio runtime for the sockets.
pub struct Party {
    dep: Deployment,
    backend: Arc<dyn SecureBackend>,
    model: SecureModel,
    weights: Option<ModelWeights>,
    options: String,
    model_hash: String,
    /// Largest frame payload accepted or sent: the backend's bound on its messages (at least
    /// [`MIN_FRAME`]) if it states one, capped by the deployment's `max_frame_mib`.
    max_frame: usize,
    rt: tokio::runtime::Runtime,
}

/// The smallest frame limit: room for hellos, control messages and abort reasons.
pub const MIN_FRAME: usize = 64 * 1024;

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Party")
            .field("role", &self.dep.role)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Party {
    /// Loads the model (and for the server the weights), checks the backend options, and
    /// starts the socket runtime.
    ///
    /// # Errors
    /// Unreadable model or weights, weights that do not fit the model, invalid options.
    pub fn new(dep: Deployment, backend: Arc<dyn SecureBackend>) -> Result<Self> {
        let model =
            SecureModel::load(&dep.model_dir).map_err(|e| NetError::Invalid(e.to_string()))?;
        let weights = if dep.role == Role::Server {
            let w = ModelWeights::load(&dep.weights_dir)
                .map_err(|e| NetError::Invalid(e.to_string()))?;
            w.check_against(&model)
                .map_err(|e| NetError::Invalid(e.to_string()))?;
            Some(w)
        } else {
            None
        };
        let options = backend
            .canonical_options(&dep.options)
            .map_err(|e| NetError::Invalid(format!("backend {}: {e}", backend.name())))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("knapsec-net")
            .enable_all()
            .build()
            .map_err(|e| NetError::Invalid(format!("cannot start the network runtime: {e}")))?;
        let model_hash = model.public_hash();
        let max_frame = match backend
            .max_message(&model, &dep.options)
            .map_err(|e| NetError::Invalid(format!("backend {}: {e}", backend.name())))?
        {
            Some(m) => {
                let m = crate::batch::max_bundle(dep.max_batch as usize, m);
                usize::try_from(m)
                    .unwrap_or(usize::MAX)
                    .max(MIN_FRAME)
                    .min(dep.max_frame)
            }
            None => dep.max_frame,
        };
        tracing::debug!(max_frame, "frame limit");
        Ok(Party {
            max_frame,
            dep,
            backend,
            model,
            weights,
            options,
            model_hash,
            rt,
        })
    }

    /// This party's role.
    pub fn role(&self) -> Role {
        self.dep.role
    }

    /// The largest frame payload this party accepts or sends (see [`MIN_FRAME`]).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The secure model's public part.
    pub fn model(&self) -> &SecureModel {
        &self.model
    }

    fn hello(&self, session: [u8; 16]) -> Result<Hello> {
        Hello::new(
            self.dep.role,
            session,
            self.backend.name(),
            &self.backend.version(),
            &self.options,
            &self.model_hash,
        )
    }

    /// Initiator side of one connection: connect, authenticate, send our hello, check theirs.
    async fn initiate(&self, peer: Role, session: [u8; 16]) -> Result<Established> {
        let me = self.dep.role;
        let stream =
            connect_retry(peer, self.dep.address(peer), self.dep.connect_timeout()).await?;
        let remote = *self
            .dep
            .peers
            .get(peer)
            .ok_or_else(|| NetError::Invalid(format!("no key for the {peer}")))?;
        within(self.dep.handshake_timeout(), peer, "the handshake", async {
            let mut channel = SecureChannel::initiate(
                me,
                peer,
                stream,
                &self.dep.keypair,
                &remote,
                self.max_frame,
            )
            .await?;
            let mine = self.hello(session)?;
            channel
                .send_frame(FrameKind::Data, &mine.to_bytes())
                .await?;
            let theirs = recv_hello(&mut channel).await?;
            settle(channel, me, &mine, theirs, true).await
        })
        .await
    }

    /// Responder side, for a connection the listener authenticated: answer its hello with
    /// ours (for `session`, or the initiator's session if `None`), check.
    async fn answer(&self, arrival: Arrival, session: Option<[u8; 16]>) -> Result<Established> {
        let me = self.dep.role;
        let Arrival {
            mut channel,
            hello: theirs,
            ..
        } = arrival;
        let peer = channel.peer();
        within(self.dep.handshake_timeout(), peer, "the handshake", async {
            let mine = self.hello(session.unwrap_or(theirs.session))?;
            channel
                .send_frame(FrameKind::Data, &mine.to_bytes())
                .await?;
            settle(channel, me, &mine, theirs, false).await
        })
        .await
    }

    fn transport(&self, links: Vec<Established>) -> Result<(TcpTransport, PairKeys)> {
        let pairs = links
            .iter()
            .map(|l| (l.channel.peer(), l.pair_key))
            .collect();
        let channels = links.into_iter().map(|l| l.channel).collect();
        let t = TcpTransport::new(
            self.dep.role,
            channels,
            self.rt.handle().clone(),
            self.dep.recv_timeout(),
            self.max_frame,
        )?;
        Ok((t, pairs))
    }

    /// Runs inferences `index … index + n − 1` (`n` = `inputs.len()`, the client's images or
    /// `None`s) through the backend's phases, one image per lane ([`crate::batch`]; a single
    /// image runs on this thread as it is): for every lane without a session yet, its
    /// once-per-session phase ([`SecureBackend::open_session`], kept in `sessions` for the
    /// following inferences), then the offline and the online phase. The session's `keys` are
    /// one value for the whole session, so that the backend sees every contribution of it.
    /// The figures are the batch's; the first inference's include the once-per-session work.
    fn run_batch<'s>(
        &'s self,
        transport: &mut TcpTransport,
        sessions: &mut Vec<Box<dyn PartySession + 's>>,
        keys: &'s SessionKeys,
        index: u64,
        inputs: Vec<Option<&[f32]>>,
    ) -> Result<(Vec<PartyOutput>, InferenceStats)> {
        transport.set_scope("", "");
        let start = Instant::now();
        let mut metered = Metered::new(transport);
        let err = |source| NetError::Backend { index, source };
        let images = inputs.len();
        if sessions.len() < images {
            let job = SessionJob {
                role: self.dep.role,
                model: &self.model,
                weights: self.weights.as_ref(),
                options: &self.options,
                keys,
            };
            let backend = &*self.backend;
            let opened = run_lanes(
                &mut metered,
                vec![(); images - sessions.len()],
                |_, (), lane| backend.open_session(job, lane),
                diverged,
            )
            .map_err(err)?;
            sessions.extend(opened);
        }
        let lanes = &mut sessions[..images];
        run_lanes(
            &mut metered,
            lanes.iter_mut().collect(),
            |j, s, lane| s.offline(index + j as u64, lane),
            diverged,
        )
        .map_err(err)?;
        let outputs = run_lanes(
            &mut metered,
            lanes.iter_mut().zip(inputs).collect(),
            |j, (s, x), lane| s.online(index + j as u64, x, lane),
            diverged,
        )
        .map_err(err)?;
        let stats = InferenceStats {
            index,
            images: images as u64,
            seconds: start.elapsed().as_secs_f64(),
            comm: metered.report(),
        };
        tracing::debug!(role = %self.dep.role, index, images, seconds = stats.seconds, bytes = stats.comm.bytes, "inference done");
        Ok((outputs, stats))
    }

    /// Runs a client session over `inputs`, in order, `batch` images per inference (the
    /// last inference takes what is left); `on_output` gets each image's result, with its
    /// inference's figures, as soon as it is known (and may stop the session with an error).
    ///
    /// # Errors
    /// Any failure of the session; the server and helper are told why before this returns.
    /// A `batch` of 0 or above the deployment's `max_batch` is refused before connecting.
    pub fn run_client(
        &self,
        inputs: &[Vec<f32>],
        batch: usize,
        mut on_output: impl FnMut(usize, PartyOutput, &InferenceStats) -> Result<()>,
    ) -> Result<Vec<InferenceStats>> {
        if self.dep.role != Role::Client {
            return Err(NetError::Invalid(format!(
                "run_client needs the client role, not the {}",
                self.dep.role
            )));
        }
        if batch == 0 || batch > self.dep.max_batch as usize {
            return Err(NetError::Invalid(format!(
                "a batch of {batch} images: the deployment allows 1 to {} (`max_batch` in its config)",
                self.dep.max_batch
            )));
        }
        let session: [u8; 16] = handshake::random_bytes()?;
        let (s, h) = self.rt.block_on(async {
            let (s, h) = tokio::join!(
                self.initiate(Role::Server, session),
                self.initiate(Role::Helper, session)
            );
            match (s, h) {
                (Ok(s), Ok(h)) => Ok((s, h)),
                (Err(e), Ok(mut other)) | (Ok(mut other), Err(e)) => {
                    abort_channel(&mut other.channel, &format!("the client gives up: {e}")).await;
                    Err(e)
                }
                (Err(e), Err(_)) => Err(e),
            }
        })?;
        let (mut s, mut h) = (s, h);
        let wait = self.dep.connect_timeout() + self.dep.handshake_timeout();
        self.rt.block_on(async {
            // The first failure ends the wait (the other party is told at once).
            let both = tokio::try_join!(
                wait_ready(&mut s.channel, wait),
                wait_ready(&mut h.channel, wait)
            );
            if let Err(e) = both {
                for ch in [&mut s.channel, &mut h.channel] {
                    abort_channel(ch, &format!("the client gives up: {e}")).await;
                }
                return Err(e);
            }
            Ok(())
        })?;
        tracing::info!(server = %knapsec_net::error::clean_text(&s.peer_hello.software), helper = %knapsec_net::error::clean_text(&h.peer_hello.software), "session established");
        let (mut transport, pairs) = self.transport(vec![s, h])?;
        let keys = handshake::session_keys(self.dep.role, &pairs)?;
        let mut sessions = Vec::new();
        let mut stats = Vec::new();
        let result = (|| {
            for (k, chunk) in inputs.chunks(batch).enumerate() {
                let first = k * batch;
                let index = first as u64;
                let control = match chunk.len() {
                    1 => Control::Infer { index },
                    n => Control::Batch {
                        index,
                        count: n as u32,
                    },
                };
                for p in Role::Client.others() {
                    transport.send(p, control.to_bytes())?;
                }
                let xs = chunk.iter().map(|x| Some(x.as_slice())).collect();
                let (outs, st) = self.run_batch(&mut transport, &mut sessions, &keys, index, xs)?;
                for (j, out) in outs.into_iter().enumerate() {
                    on_output(first + j, out, &st)?;
                }
                stats.push(st);
            }
            for p in Role::Client.others() {
                transport.send(p, Control::Done.to_bytes())?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                transport.close(self.dep.linger());
                Ok(stats)
            }
            Err(e) => {
                transport.abort(&format!("the client stopped: {e}"), self.dep.linger());
                Err(e)
            }
        }
    }

    /// Serves sessions as the server or the helper.
    ///
    /// # Errors
    /// The first failed session (without `keep_going`; with it, the last failed one after
    /// all `sessions` were served), or a listening socket that cannot be opened.
    pub fn serve(&self, opts: ServeOptions) -> Result<u64> {
        let me = self.dep.role;
        if me == Role::Client {
            return Err(NetError::Invalid(
                "the client does not serve; use run_client".into(),
            ));
        }
        let address = self
            .dep
            .listen
            .clone()
            .unwrap_or_else(|| self.dep.address(me).to_string());
        let listener = self
            .rt
            .block_on(TcpListener::bind(&address))
            .map_err(|source| NetError::Listen {
                address: address.clone(),
                source,
            })?;
        tracing::info!(role = %me, %address, model = %self.model_hash, "listening");
        let gate = Arc::new(Gate {
            me,
            keypair: self.dep.keypair.clone(),
            peers: self.dep.peers.clone(),
            allowed: match me {
                Role::Server => vec![Role::Client],
                _ => vec![Role::Client, Role::Server],
            },
            max_frame: self.max_frame,
            hello_wait: self.dep.handshake_timeout(),
            replay: ReplayGuard::new(),
            pending: Mutex::new(VecDeque::new()),
        });
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let acceptor = self.rt.spawn(listen(listener, gate, tx));
        let mut done = 0u64;
        // With a session count, the exit says whether all of them succeeded: the error of
        // the last failed one, once all have been served (or at once without `keep_going`).
        let mut failed = None;
        while opts.sessions.is_none_or(|n| done < n) {
            let result = self.session(&mut rx);
            done += 1;
            match result {
                Ok(n) => tracing::info!(role = %me, inferences = n, "session finished"),
                Err(e) if opts.keep_going => {
                    tracing::error!(role = %me, "session failed: {e}");
                    failed = Some(e);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        acceptor.abort();
        match failed {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// After the first connection of a session failed its handshake with `e` (a mismatch, an
    /// abort): the other party's connection may already be waiting. Answer it (its own
    /// mismatch is reported to it by the handshake) or tell it why this party stops, so that
    /// it learns the reason instead of seeing this party vanish. Waits at most two seconds.
    async fn tell_a_waiting_peer(
        &self,
        queue: &mut mpsc::Receiver<Arrival>,
        peers: &[Role],
        e: &NetError,
    ) {
        let grace = Duration::from_secs(2).min(self.dep.handshake_timeout());
        let me = self.dep.role;
        if let Ok(Ok(mut other)) =
            tokio::time::timeout(grace, self.accept_authenticated(queue, peers, None)).await
        {
            abort_channel(&mut other.channel, &format!("the {me} gives up: {e}")).await;
        }
    }

    /// Takes authenticated connections from the listener until one from `allowed` answers
    /// its hello. Connections that waited longer than the handshake deadline (their peer has
    /// given up) are closed; one from a party this session does not need now (another
    /// client) is told that this party is busy.
    async fn accept_authenticated(
        &self,
        queue: &mut mpsc::Receiver<Arrival>,
        allowed: &[Role],
        session: Option<[u8; 16]>,
    ) -> Result<Established> {
        loop {
            let mut arrival = queue
                .recv()
                .await
                .ok_or_else(|| NetError::Invalid("the listener stopped".into()))?;
            let (peer, from) = (arrival.channel.peer(), arrival.from);
            if arrival.at.elapsed() > self.dep.handshake_timeout() {
                tracing::info!(%from, "closed a stale connection of the {peer}");
                continue;
            }
            if !allowed.contains(&peer) {
                let me = self.dep.role;
                abort_channel(
                    &mut arrival.channel,
                    &format!("the {me} is busy with another session"),
                )
                .await;
                tracing::warn!(%from, "turned away the {peer}: busy with another session");
                continue;
            }
            match self.answer(arrival, session).await {
                Ok(est) => return Ok(est),
                Err(
                    e @ (NetError::Mismatch { .. }
                    | NetError::Aborted { .. }
                    | NetError::Protocol { .. }),
                ) => {
                    return Err(e);
                }
                Err(e) => tracing::warn!(%from, "refused a connection: {e}"),
            }
        }
    }

    fn session(&self, queue: &mut mpsc::Receiver<Arrival>) -> Result<u64> {
        let me = self.dep.role;
        let links = self.rt.block_on(async {
            // The first connection of the session, and the role still missing.
            let peers: &[Role] = match me {
                Role::Server => &[Role::Client],
                _ => &[Role::Client, Role::Server],
            };
            let mut first = match self.accept_authenticated(queue, peers, None).await {
                Ok(first) => first,
                Err(e) => {
                    // The helper's other peer connects to it as well, and may be waiting.
                    if me == Role::Helper {
                        self.tell_a_waiting_peer(queue, peers, &e).await;
                    }
                    return Err(e);
                }
            };
            let other = match (me, first.channel.peer()) {
                (Role::Server, _) => Role::Helper,
                (_, Role::Client) => Role::Server,
                _ => Role::Client,
            };
            let session = first.peer_hello.session;
            let wait = self.dep.connect_timeout() + self.dep.handshake_timeout();
            let allowed = [other];
            let second = async {
                if me == Role::Server {
                    self.initiate(Role::Helper, session).await
                } else {
                    let accept = self.accept_authenticated(queue, &allowed, Some(session));
                    tokio::time::timeout(wait, accept)
                        .await
                        .map_err(|_| timeout_err(other, "the start of the session", wait))?
                }
            };
            // While the second connection is made, watch the first: before `Ready` its peer
            // sends nothing but an abort (e.g. the client found a mismatch with the other
            // party), so dropping this read when the second connection wins loses nothing.
            let first_peer = first.channel.peer();
            let second = tokio::select! {
                r = second => r,
                f = first.channel.recv_frame() => Err(match f {
                    Ok(f) if f.kind == FrameKind::Abort => NetError::Aborted {
                        peer: first_peer,
                        reason: peer_text(&f.payload),
                    },
                    Ok(_) => NetError::Protocol { peer: first_peer, message: "it spoke before the session was ready".into() },
                    Err(e) => e,
                }),
            };
            match second {
                Ok(mut second) => {
                    // Tell the client that this party is ready.
                    let client = if first_peer == Role::Client { &mut first } else { &mut second };
                    client.channel.send_frame(FrameKind::Data, &Control::Ready.to_bytes()).await?;
                    Ok(vec![first, second])
                }
                Err(e) => {
                    if !matches!(e, NetError::Aborted { .. }) {
                        abort_channel(&mut first.channel, &format!("the {me} gives up: {e}")).await;
                    }
                    Err(e)
                }
            }
        })?;
        let (mut transport, pairs) = self.transport(links)?;
        let keys = handshake::session_keys(me, &pairs)?;
        let mut sessions = Vec::new();
        let mut expected = 0u64;
        let max_batch = self.dep.max_batch;
        let result = (|| {
            loop {
                // The client may think between inferences: its own timeout, not `recv_s`.
                let msg = transport.recv_within(Role::Client, self.dep.idle_timeout())?;
                match Control::from_bytes(&msg, Role::Client)? {
                    Control::Done => return Ok(expected),
                    Control::Infer { index } if index == expected => {
                        let (_, st) = self.run_batch(
                            &mut transport,
                            &mut sessions,
                            &keys,
                            index,
                            vec![None],
                        )?;
                        tracing::info!(role = %me, index, seconds = st.seconds, bytes_sent = st.comm.bytes, "inference served");
                        expected += 1;
                    }
                    Control::Batch { index, count }
                        if index == expected && (2..=max_batch).contains(&count) =>
                    {
                        let none = vec![None; count as usize];
                        let (_, st) =
                            self.run_batch(&mut transport, &mut sessions, &keys, index, none)?;
                        tracing::info!(role = %me, index, images = count, seconds = st.seconds, bytes_sent = st.comm.bytes, "batch served");
                        expected += u64::from(count);
                    }
                    Control::Batch { index, count } if index == expected => {
                        return Err(NetError::Protocol {
                            peer: Role::Client,
                            message: format!(
                                "asked for a batch of {count} images; this deployment allows 2 to {max_batch} (`max_batch`)"
                            ),
                        });
                    }
                    Control::Batch { index, .. } => {
                        return Err(NetError::Protocol {
                            peer: Role::Client,
                            message: format!("asked for inference {index}, expected {expected}"),
                        });
                    }
                    Control::Ready => {
                        return Err(NetError::Protocol {
                            peer: Role::Client,
                            message: "sent a ready message in the middle of the session".into(),
                        });
                    }
                    Control::Infer { index } => {
                        return Err(NetError::Protocol {
                            peer: Role::Client,
                            message: format!("asked for inference {index}, expected {expected}"),
                        });
                    }
                }
            }
        })();
        match result {
            Ok(n) => {
                transport.close(self.dep.linger());
                Ok(n)
            }
            Err(e) => {
                transport.abort(&format!("the {me} stopped: {e}"), self.dep.linger());
                Err(e)
            }
        }
    }
}
