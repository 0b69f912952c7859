//! The TCP transport over real loopback sockets: ordering, large and pipelined messages,
//! authentication failures, and fault propagation (a dead, aborting, silent or misbehaving
//! party ends the others' waits with an error naming it).

use knapsec_core::Role;
use knapsec_core::transport::{Transport, TransportError};
use knapsec_net::NetError;
use knapsec_net::keys::KeyPair;
use knapsec_net::secure_channel::{PeerKeys, ReplayGuard, SecureChannel, WIRE_VERSION};
use knapsec_net::tcp::TcpTransport;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Mesh {
    rt: tokio::runtime::Runtime,
    keys: Vec<KeyPair>,
    peers: PeerKeys,
}

impl Mesh {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let keys: Vec<KeyPair> = Role::ALL
            .iter()
            .map(|_| KeyPair::generate().unwrap())
            .collect();
        let mut peers = PeerKeys::default();
        for r in Role::ALL {
            peers.keys[r.index()] = Some(keys[r.index()].public);
        }
        Mesh { rt, keys, peers }
    }

    /// One authenticated pair of channels over loopback: (initiator's, responder's).
    fn pair(
        &self,
        a: Role,
        b: Role,
        a_key: &KeyPair,
        max: [usize; 2],
    ) -> Result<(SecureChannel, SecureChannel), NetError> {
        let (ra, rb) = self.handshake(a, b, a_key, &self.peers, max);
        Ok((ra?, rb?))
    }

    /// The server's side of a connection from a client, remembering first messages in `guard`.
    async fn server_answers(
        &self,
        stream: TcpStream,
        guard: &ReplayGuard,
    ) -> Result<SecureChannel, NetError> {
        SecureChannel::respond_guarded(
            Role::Server,
            stream,
            &self.keys[1],
            &self.peers,
            &[Role::Client],
            BIG,
            guard,
        )
        .await
    }

    /// Both ends of a handshake over loopback, `a` (with `a_key`) initiating, `b` answering
    /// with the public keys `b_peers`: (initiator's outcome, responder's).
    fn handshake(
        &self,
        a: Role,
        b: Role,
        a_key: &KeyPair,
        b_peers: &PeerKeys,
        max: [usize; 2],
    ) -> (
        Result<SecureChannel, NetError>,
        Result<SecureChannel, NetError>,
    ) {
        self.rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::join!(
                async {
                    let s = TcpStream::connect(addr).await.unwrap();
                    SecureChannel::initiate(a, b, s, a_key, &self.keys[b.index()].public, max[0])
                        .await
                },
                async {
                    let (s, _) = listener.accept().await.unwrap();
                    SecureChannel::respond(b, s, &self.keys[b.index()], b_peers, &[a], max[1]).await
                }
            )
        })
    }

    /// Three transports (client, server, helper) with `recv_timeout` and per-party maxima.
    fn transports(&self, recv_timeout: Duration, max: [usize; 3]) -> [TcpTransport; 3] {
        let (c, s, h) = (Role::Client, Role::Server, Role::Helper);
        let (cs, sc) = self.pair(c, s, &self.keys[0], [max[0], max[1]]).unwrap();
        let (ch, hc) = self.pair(c, h, &self.keys[0], [max[0], max[2]]).unwrap();
        let (sh, hs) = self.pair(s, h, &self.keys[1], [max[1], max[2]]).unwrap();
        let mk = |r: Role, chans, m| {
            TcpTransport::new(r, chans, self.rt.handle().clone(), recv_timeout, m).unwrap()
        };
        [
            mk(c, vec![cs, ch], max[0]),
            mk(s, vec![sc, sh], max[1]),
            mk(h, vec![hc, hs], max[2]),
        ]
    }
}

const BIG: usize = 1 << 24;

#[test]
fn ordered_pipelined_and_large_messages() {
    let mesh = Mesh::new();
    let [mut c, mut s, mut h] = mesh.transports(Duration::from_secs(10), [BIG; 3]);
    let large: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 + 3) as u8).collect();
    // Many small messages without waiting (pipelined), then a large one crossing many records.
    for i in 0..1000u32 {
        c.send(Role::Server, i.to_le_bytes().to_vec()).unwrap();
    }
    c.send(Role::Server, large.clone()).unwrap();
    c.send(Role::Helper, vec![]).unwrap();
    h.send(Role::Server, b"from helper".to_vec()).unwrap();
    for i in 0..1000u32 {
        assert_eq!(s.recv(Role::Client).unwrap(), i.to_le_bytes());
    }
    assert_eq!(s.recv(Role::Client).unwrap(), large);
    assert_eq!(s.recv(Role::Helper).unwrap(), b"from helper");
    assert_eq!(h.recv(Role::Client).unwrap(), Vec::<u8>::new());
    s.send(Role::Client, large.clone()).unwrap();
    assert_eq!(c.recv(Role::Server).unwrap(), large);
    assert_eq!(s.stats(Role::Client).received, 4000 + large.len() as u64);
    assert!(matches!(
        c.send(Role::Client, vec![1]),
        Err(TransportError::SelfMessage { .. })
    ));
    // A clean close is not a fault for the peers' reads already done, and ends with goodbye.
    let linger = Duration::from_secs(1);
    let t = std::thread::spawn(move || h.close(linger));
    let e = s.recv(Role::Helper).unwrap_err().to_string();
    assert!(
        e.contains("helper disconnected (it closed the session)"),
        "{e}"
    );
    t.join().unwrap();
}

#[test]
fn wrong_key_is_refused_at_connection_time() {
    let mesh = Mesh::new();
    let impostor = KeyPair::generate().unwrap();
    let err = mesh
        .pair(Role::Client, Role::Server, &impostor, [BIG; 2])
        .unwrap_err()
        .to_string();
    // The responder's error is returned first by `pair` only if the initiator succeeded;
    // either way the message must say it is about authentication.
    assert!(
        err.contains("authentication failed") || err.contains("does not authenticate"),
        "{err}"
    );
    // A client that holds the wrong public key for the server is refused too.
    let mut wrong = mesh.peers.clone();
    wrong.keys[0] = Some(impostor.public);
    let (ra, rb) = mesh.handshake(Role::Client, Role::Server, &mesh.keys[0], &wrong, [BIG; 2]);
    assert!(rb.is_err());
    let err = ra.unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Refused {
                peer: Role::Server,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("authentication failed"), "{err}");
    // A helper's key cannot pose as the client.
    let err = mesh
        .pair(Role::Client, Role::Server, &mesh.keys[2], [BIG; 2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("authentication"), "{err}");
}

#[test]
fn a_dead_party_ends_the_others_waits_at_once() {
    let mesh = Mesh::new();
    let [mut c, mut s, h] = mesh.transports(Duration::from_secs(30), [BIG; 3]);
    s.set_scope("layer3_1", "drelu");
    c.set_scope("layer3_1", "drelu");
    let start = Instant::now();
    drop(h); // the helper "crashes": its connections close without a goodbye
    // The server waits for the client, not for the helper; it still learns of the helper's death.
    let e = s.recv(Role::Client).unwrap_err().to_string();
    assert!(e.contains("helper disconnected"), "{e}");
    assert!(e.contains("layer layer3_1 (drelu)"), "{e}");
    assert!(e.contains("while the server waited for the client"), "{e}");
    let e = c.recv(Role::Helper).unwrap_err().to_string();
    assert!(
        e.contains("helper disconnected") && e.contains("without a goodbye"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    // Later calls keep failing the same way instead of hanging.
    assert!(s.recv(Role::Client).is_err());
    assert!(s.send(Role::Client, vec![1]).is_err());
}

#[test]
fn a_busy_peer_that_is_alive_is_waited_for_beyond_the_receive_timeout() {
    let mesh = Mesh::new();
    let timeout = Duration::from_millis(300);
    let [mut c, mut s, _h] = mesh.transports(timeout, [BIG; 3]);
    // The client "computes" for 2.5 receive timeouts before it sends; its keep-alives say it
    // is there, so the server keeps waiting instead of blaming it.
    let t = std::thread::spawn(move || {
        std::thread::sleep(timeout * 5 / 2);
        c.send(Role::Server, vec![7; 10]).unwrap();
        c
    });
    let start = Instant::now();
    assert_eq!(s.recv(Role::Client).unwrap(), vec![7; 10]);
    assert!(start.elapsed() >= timeout * 2);
    let _c = t.join().unwrap();
    // A peer that stays alive but never sends is still given up, after four receive timeouts.
    let start = Instant::now();
    let e = s.recv(Role::Client).unwrap_err().to_string();
    assert!(e.contains("alive, but no message"), "{e}");
    assert!(
        start.elapsed() >= timeout * 4 && start.elapsed() < timeout * 4 + Duration::from_secs(2)
    );
}

#[test]
fn abort_reason_reaches_both_peers() {
    let mesh = Mesh::new();
    let [mut c, s, mut h] = mesh.transports(Duration::from_secs(30), [BIG; 3]);
    let t = std::thread::spawn(move || s.abort("the model hash differs", Duration::from_secs(2)));
    let e = c.recv(Role::Helper).unwrap_err().to_string();
    assert!(
        e.contains("server: aborted the session") && e.contains("the model hash differs"),
        "{e}"
    );
    let e = h.recv(Role::Server).unwrap_err().to_string();
    assert!(e.contains("the model hash differs"), "{e}");
    t.join().unwrap();
}

#[test]
fn silent_party_times_out_and_oversized_frames_are_rejected() {
    let mesh = Mesh::new();
    // The helper accepts at most 1000 bytes per message; the others up to BIG.
    let [mut c, mut s, mut h] = mesh.transports(Duration::from_millis(300), [BIG, BIG, 1000]);
    let start = Instant::now();
    let e = s.recv(Role::Client).unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::Timeout {
                peer: Role::Client,
                ..
            }
        ),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    // The sender's own limit is checked before anything is sent.
    assert!(matches!(
        h.send(Role::Client, vec![0; 1001]),
        Err(TransportError::FrameTooLarge { size: 1001, .. })
    ));
    // A peer with a larger limit sends 2000 bytes: the helper rejects the frame and the link.
    c.send(Role::Helper, vec![0; 2000]).unwrap();
    let e = h.recv(Role::Client).unwrap_err().to_string();
    assert!(e.contains("2000 bytes exceeds the maximum of 1000"), "{e}");
}

/// A connection to `listener` on which `bytes` were sent: (the sender's end, the listener's).
async fn raw_connection(listener: &TcpListener, bytes: &[u8]) -> (TcpStream, TcpStream) {
    let mut s = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    (s, stream)
}

/// Reads one record (`len: u16 BE | bytes`) of the connection format.
async fn read_record(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// What an initiator sent before its answer came: preamble and first handshake record.
async fn capture_first_message(mesh: &Mesh) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = mesh.keys[0].clone();
    let server = mesh.keys[1].public;
    let init = tokio::spawn(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        // Never answered: the test drops the connection.
        let _ = SecureChannel::initiate(Role::Client, Role::Server, s, &client, &server, BIG).await;
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let mut out = vec![0u8; 12];
    s.read_exact(&mut out).await.unwrap();
    let rec = read_record(&mut s).await.unwrap();
    out.extend_from_slice(&(rec.len() as u16).to_be_bytes());
    out.extend_from_slice(&rec);
    drop(s);
    let _ = init.await;
    out
}

#[test]
fn a_replayed_first_handshake_message_is_dropped_without_an_answer() {
    let mesh = Mesh::new();
    mesh.rt.block_on(async {
        let recorded = capture_first_message(&mesh).await;
        let guard = ReplayGuard::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for attempt in 0..2 {
            let (mut s, stream) = raw_connection(&listener, &recorded).await;
            let start = Instant::now();
            let r = mesh.server_answers(stream, &guard).await;
            if attempt == 0 {
                // The first time it authenticates (KK cannot tell a recording) and is answered.
                assert!(r.is_ok(), "{:?}", r.err());
                assert!(!read_record(&mut s).await.unwrap().is_empty());
            } else {
                // The replay is dropped at once, without a word.
                let e = r.unwrap_err().to_string();
                assert!(e.contains("replayed"), "{e}");
                assert!(start.elapsed() < Duration::from_secs(1));
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty(), "the replayer got {} bytes", rest.len());
            }
        }
    });
}

#[test]
fn a_refusal_before_authentication_names_no_role_version_or_key() {
    let mesh = Mesh::new();
    let refusal = |preamble: Vec<u8>, then: Vec<u8>| {
        let mesh = &mesh;
        mesh.rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (mut s, stream) = raw_connection(&listener, &[preamble, then].concat()).await;
            let local = mesh
                .server_answers(stream, &ReplayGuard::new())
                .await
                .unwrap_err()
                .to_string();
            assert!(read_record(&mut s).await.unwrap().is_empty());
            let public = String::from_utf8(read_record(&mut s).await.unwrap()).unwrap();
            (local, public)
        })
    };
    let pre = |version: u16, from: u8, to: u8| {
        let mut p = b"KNAPSEC\0".to_vec();
        p.extend_from_slice(&version.to_le_bytes());
        p.extend_from_slice(&[from, to]);
        p
    };
    let fingerprint = mesh.keys[0].public.fingerprint();
    // A client asking for the helper at the server's address.
    let (local, public) = refusal(pre(WIRE_VERSION, 0, 2), vec![]);
    assert!(local.contains("serves the server"), "{local}");
    // An initiator with another wire version learns only that its own is not spoken here.
    let (local, public_v) = refusal(pre(999, 0, 1), vec![]);
    assert!(local.contains(&format!("speaks {WIRE_VERSION}")), "{local}");
    assert_eq!(public_v, "unsupported wire version 999");
    // A stranger's first message does not authenticate.
    let mut junk = vec![0, 48];
    junk.extend_from_slice(&[7u8; 48]);
    let (local, public_a) = refusal(pre(WIRE_VERSION, 0, 1), junk);
    assert!(local.contains(&fingerprint.to_string()), "{local}");
    assert_eq!(public_a, "authentication failed");
    for p in [&public, &public_v, &public_a] {
        let l = p.to_lowercase();
        for secret in ["client", "server", "helper", &fingerprint.to_string()] {
            assert!(!l.contains(secret), "{p:?} reveals {secret:?}");
        }
        assert!(!p.contains(&format!("version {WIRE_VERSION}")), "{p:?}");
    }
}

#[test]
fn a_refusal_text_is_cleaned_before_it_is_shown() {
    let mesh = Mesh::new();
    let e = mesh.rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut pre = [0u8; 12];
            s.read_exact(&mut pre).await.unwrap();
            let _ = read_record(&mut s).await.unwrap();
            let mut evil = b"\x1b[2J\x1b]0;pwned\x07\nERROR forged log line ".to_vec();
            evil.extend(std::iter::repeat_n(b'x', 60_000));
            s.write_all(&[0, 0]).await.unwrap();
            s.write_all(&(evil.len() as u16).to_be_bytes())
                .await
                .unwrap();
            s.write_all(&evil).await.unwrap();
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let r = SecureChannel::initiate(
            Role::Client,
            Role::Server,
            s,
            &mesh.keys[0],
            &mesh.keys[1].public,
            BIG,
        )
        .await;
        fake.await.unwrap();
        r.unwrap_err().to_string()
    });
    assert!(e.contains("refused the connection"), "{e}");
    assert!(!e.chars().any(char::is_control), "{e:?}");
    assert!(e.len() < 1000, "{} bytes", e.len());
}

#[test]
fn an_idle_wait_has_its_own_limit_however_lively_the_peer() {
    let mesh = Mesh::new();
    let timeout = Duration::from_millis(300);
    let [_c, mut s, _h] = mesh.transports(timeout, [BIG; 3]);
    // The client sends keep-alives but no request: a plain receive would wait four receive
    // timeouts, the idle wait gives up after its own limit.
    let start = Instant::now();
    let e = s
        .recv_within(Role::Client, Duration::from_millis(150))
        .unwrap_err()
        .to_string();
    assert!(e.contains("idle for 0.15 s"), "{e}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < timeout,
        "{took:?}"
    );
}
