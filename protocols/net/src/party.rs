//! The party driver: runs one role of a deployment (`knapsec party`), DESIGN §5.
//!
//! A **session** is one client's visit: the client connects to the server and the helper,
//! the server connects to the helper, every connection is authenticated
//! ([`crate::secure_channel`]) and starts with a hello exchange ([`crate::handshake`]);
//! then the client runs its inputs one after another (a [`Control::Infer`] to both others
//! before each, [`Control::Done`] at the end) and everybody closes cleanly. Server and
//! helper serve sessions one after another, any number of inferences each.
//!
//! Connection directions: client → server, client → helper, server → helper, so the client
//! needs no listening port. A connection that fails authentication never becomes a session:
//! it is logged and refused, and the server or helper keeps listening. A session that fails
//! (mismatch, a dead party, a timeout, a backend error) is aborted: the failing party tells
//! the others why, everybody stops with an error naming the party and the layer, and the
//! server and helper exit non-zero (unless told to keep serving).

use crate::deploy::Deployment;
use crate::error::{NetError, Result};
use crate::frame::FrameKind;
use crate::handshake::{self, Control, Hello};
use crate::metered::{CommReport, Metered};
use crate::secure_channel::SecureChannel;
use crate::tcp::TcpTransport;
use knapsec_core::Role;
use knapsec_core::backend::{PartyJob, PartyOutput, SecureBackend, SessionKeys};
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::transport::Transport;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// The session key this party shares with each peer.
type PairKeys = Vec<(Role, [u8; 32])>;

/// One established connection: the channel, both hellos, and the pair key.
struct Established {
    channel: SecureChannel,
    peer_hello: Hello,
    pair_key: [u8; 32],
}

/// Per-inference figures of one party.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct InferenceStats {
    /// The inference's index in the session.
    pub index: u64,
    /// Wall-clock time of the inference at this party.
    pub seconds: f64,
    /// What this party sent; `rounds` are its flights (see [`crate::metered`]).
    pub comm: CommReport,
}

/// How server and helper serve.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServeOptions {
    /// Stop (successfully) after this many sessions; `None`: serve until killed.
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
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Party")
            .field("role", &self.dep.role)
            .field("backend", &self.backend.name())
            .finish()
    }
}

fn timeout_err(peer: Role, phase: &'static str, d: Duration) -> NetError {
    NetError::Timeout {
        peer,
        phase,
        seconds: d.as_secs(),
    }
}

async fn within<T>(
    d: Duration,
    peer: Role,
    phase: &'static str,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| timeout_err(peer, phase, d))?
}

/// Connects to `address`, retrying every 100 ms until `deadline` has passed.
async fn connect_retry(peer: Role, address: &str, deadline: Duration) -> Result<TcpStream> {
    let start = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let attempt = tokio::time::timeout(
            left.max(Duration::from_millis(1)),
            TcpStream::connect(address),
        )
        .await;
        let last = match attempt {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        if start.elapsed() >= deadline {
            return Err(NetError::Connect {
                peer,
                address: address.to_string(),
                seconds: deadline.as_secs(),
                last,
            });
        }
        tokio::time::sleep(
            Duration::from_millis(100).min(deadline.saturating_sub(start.elapsed())),
        )
        .await;
    }
}

/// Receives the peer's hello (or its abort).
async fn recv_hello(ch: &mut SecureChannel) -> Result<Hello> {
    let peer = ch.peer();
    let f = ch.recv_frame().await?;
    match f.kind {
        FrameKind::Data => Hello::from_bytes(&f.payload, peer),
        FrameKind::Abort => Err(NetError::Aborted {
            peer,
            reason: String::from_utf8_lossy(&f.payload).into_owned(),
        }),
        FrameKind::Goodbye => Err(NetError::Protocol {
            peer,
            message: "it closed before its hello".into(),
        }),
        // `recv_frame` passes no keep-alives on.
        FrameKind::Alive => Err(NetError::Protocol {
            peer,
            message: "a keep-alive before its hello".into(),
        }),
    }
}

/// Waits (at most `wait`) for the peer's [`Control::Ready`], or its abort.
async fn wait_ready(ch: &mut SecureChannel, wait: Duration) -> Result<()> {
    let peer = ch.peer();
    let f = tokio::time::timeout(wait, ch.recv_frame())
        .await
        .map_err(|_| timeout_err(peer, "the start of the session", wait))??;
    match f.kind {
        FrameKind::Data if Control::from_bytes(&f.payload, peer)? == Control::Ready => Ok(()),
        FrameKind::Abort => Err(NetError::Aborted {
            peer,
            reason: String::from_utf8_lossy(&f.payload).into_owned(),
        }),
        _ => Err(NetError::Protocol {
            peer,
            message: "expected its ready message".into(),
        }),
    }
}

/// Best effort: tells the peer of `ch` why this party gives up.
async fn abort_channel(ch: &mut SecureChannel, reason: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        ch.send_frame(FrameKind::Abort, reason.as_bytes()),
    )
    .await;
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
        Ok(Party {
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
                self.dep.max_frame,
            )
            .await?;
            let mine = self.hello(session)?;
            channel
                .send_frame(FrameKind::Data, &mine.to_bytes())
                .await?;
            let theirs = recv_hello(&mut channel).await?;
            if let Err(e) = mine.check(&theirs, peer) {
                abort_channel(&mut channel, &e.to_string()).await;
                return Err(e);
            }
            let pair_key = handshake::pair_key(me, peer, channel.handshake_hash(), &mine, &theirs);
            Ok(Established {
                channel,
                peer_hello: theirs,
                pair_key,
            })
        })
        .await
    }

    /// Responder side: authenticate an accepted stream, read the hello, answer with ours
    /// (for `session`, or the initiator's session if `None`), check.
    async fn respond(
        &self,
        stream: TcpStream,
        allowed: &[Role],
        session: Option<[u8; 16]>,
    ) -> Result<Established> {
        let me = self.dep.role;
        let guess = allowed[0];
        within(
            self.dep.handshake_timeout(),
            guess,
            "the handshake",
            async {
                let mut channel = SecureChannel::respond(
                    me,
                    stream,
                    &self.dep.keypair,
                    &self.dep.peers,
                    allowed,
                    self.dep.max_frame,
                )
                .await?;
                let peer = channel.peer();
                let theirs = recv_hello(&mut channel).await?;
                let mine = self.hello(session.unwrap_or(theirs.session))?;
                channel
                    .send_frame(FrameKind::Data, &mine.to_bytes())
                    .await?;
                if let Err(e) = mine.check(&theirs, peer) {
                    abort_channel(&mut channel, &e.to_string()).await;
                    return Err(e);
                }
                let pair_key =
                    handshake::pair_key(peer, me, channel.handshake_hash(), &theirs, &mine);
                Ok(Established {
                    channel,
                    peer_hello: theirs,
                    pair_key,
                })
            },
        )
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
            self.dep.max_frame,
        )?;
        Ok((t, pairs))
    }

    /// Runs inference `index` with the session's `keys` (one value for the whole session,
    /// so that the backend sees every contribution of it); the private seed is drawn afresh.
    fn run_one(
        &self,
        transport: &mut TcpTransport,
        keys: &mut SessionKeys,
        index: u64,
        input: Option<&[f32]>,
    ) -> Result<(PartyOutput, InferenceStats)> {
        keys.private = handshake::random_bytes()?;
        transport.set_scope("", "");
        let start = Instant::now();
        let mut metered = Metered::new(transport);
        let job = PartyJob {
            role: self.dep.role,
            model: &self.model,
            weights: self.weights.as_ref(),
            input,
            options: &self.options,
            keys,
            inference: index,
            transport: &mut metered,
        };
        let out = self
            .backend
            .run(job)
            .map_err(|source| NetError::Backend { index, source })?;
        let stats = InferenceStats {
            index,
            seconds: start.elapsed().as_secs_f64(),
            comm: metered.report(),
        };
        tracing::debug!(role = %self.dep.role, index, seconds = stats.seconds, bytes = stats.comm.bytes, "inference done");
        Ok((out, stats))
    }

    /// Runs a client session: one inference per input, in order; `on_output` gets each
    /// result as soon as it is known (and may stop the session with an error).
    ///
    /// # Errors
    /// Any failure of the session; the server and helper are told why before this returns.
    pub fn run_client(
        &self,
        inputs: &[Vec<f32>],
        mut on_output: impl FnMut(usize, PartyOutput, &InferenceStats) -> Result<()>,
    ) -> Result<Vec<InferenceStats>> {
        if self.dep.role != Role::Client {
            return Err(NetError::Invalid(format!(
                "run_client needs the client role, not the {}",
                self.dep.role
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
        tracing::info!(server = %s.peer_hello.software, helper = %h.peer_hello.software, "session established");
        let (mut transport, pairs) = self.transport(vec![s, h])?;
        let mut keys = handshake::session_keys(self.dep.role, &pairs)?;
        let mut stats = Vec::new();
        let result = (|| {
            for (i, input) in inputs.iter().enumerate() {
                let index = i as u64;
                for p in Role::Client.others() {
                    transport.send(p, Control::Infer { index }.to_bytes())?;
                }
                let (out, st) = self.run_one(&mut transport, &mut keys, index, Some(input))?;
                on_output(i, out, &st)?;
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
    /// The first failed session (unless `keep_going`), or a listening socket that cannot be opened.
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
        let mut done = 0u64;
        while opts.sessions.is_none_or(|n| done < n) {
            let outcome = self.session(&listener);
            done += 1;
            match outcome {
                Ok(n) => tracing::info!(role = %me, inferences = n, "session finished"),
                Err(e) if opts.keep_going => tracing::error!(role = %me, "session failed: {e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// After the first connection of a session failed its handshake with `e` (a mismatch, an
    /// abort): the other party's connection may already be waiting. Answer it (its own
    /// mismatch is reported to it by the handshake) or tell it why this party stops, so that
    /// it learns the reason instead of seeing this party vanish. Waits at most two seconds.
    async fn tell_a_waiting_peer(&self, listener: &TcpListener, peers: &[Role], e: &NetError) {
        let grace = Duration::from_secs(2).min(self.dep.handshake_timeout());
        let me = self.dep.role;
        if let Ok(Ok(mut other)) =
            tokio::time::timeout(grace, self.accept_authenticated(listener, peers, None)).await
        {
            abort_channel(&mut other.channel, &format!("the {me} gives up: {e}")).await;
        }
    }

    /// Accepts until a connection from one of `allowed` authenticates; refused connections
    /// (wrong key, not a knapsec party) are logged and do not end the wait.
    async fn accept_authenticated(
        &self,
        listener: &TcpListener,
        allowed: &[Role],
        session: Option<[u8; 16]>,
    ) -> Result<Established> {
        loop {
            let (stream, from) = listener.accept().await.map_err(|source| NetError::Listen {
                address: format!("{:?}", listener.local_addr()),
                source,
            })?;
            match self.respond(stream, allowed, session).await {
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

    fn session(&self, listener: &TcpListener) -> Result<u64> {
        let me = self.dep.role;
        let links = self.rt.block_on(async {
            // The first connection of the session, and the role still missing.
            let peers: &[Role] = match me {
                Role::Server => &[Role::Client],
                _ => &[Role::Client, Role::Server],
            };
            let mut first = match self.accept_authenticated(listener, peers, None).await {
                Ok(first) => first,
                Err(e) => {
                    // The helper's other peer connects to it as well, and may be waiting.
                    if me == Role::Helper {
                        self.tell_a_waiting_peer(listener, peers, &e).await;
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
                    let accept = self.accept_authenticated(listener, &allowed, Some(session));
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
                        reason: String::from_utf8_lossy(&f.payload).into_owned(),
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
        let mut keys = handshake::session_keys(me, &pairs)?;
        let mut expected = 0u64;
        let result = (|| {
            loop {
                let msg = transport.recv(Role::Client)?;
                match Control::from_bytes(&msg, Role::Client)? {
                    Control::Done => return Ok(expected),
                    Control::Infer { index } if index == expected => {
                        let (_, st) = self.run_one(&mut transport, &mut keys, index, None)?;
                        tracing::info!(role = %me, index, seconds = st.seconds, bytes_sent = st.comm.bytes, "inference served");
                        expected += 1;
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
