//! The deployment config `deploy.ron`: where the parties are, their keys, the model, the
//! backend and the timeouts (digest §10.13: the reference edits addresses in source code).
//!
//! Optional fields may be written bare (`listen: "0.0.0.0:7102"`) or as `Some(…)`.
//! One file can serve all three hosts: `{role}` in `private_key` is replaced by the role
//! a party runs as, and relative paths are relative to the file's folder.
//!
//! ```ron
//! (
//!     format: 1,
//!     client: (public_key: "keys/client.pub"),
//!     server: (address: "10.0.0.2:7101", public_key: "keys/server.pub"),
//!     helper: (address: "10.0.0.3:7102", public_key: "keys/helper.pub", listen: "0.0.0.0:7102"),
//!     private_key: "keys/{role}.key",
//!     model: "model",            // folder with model.ron (all parties)
//!     weights: "model",          // folder with weights.safetensors (server; default: `model`)
//!     backend: "securenn",
//!     options: "()",             // the backend's options, RON text
//!     timeouts: (connect_s: 30, handshake_s: 10, recv_s: 60, idle_s: 600, linger_s: 5),
//!     max_frame_mib: 1024,
//! )
//! ```

use knapsec_core::Role;
use knapsec_net::error::{NetError, Result};
use knapsec_net::keys::{self, KeyPair, PublicKey};
use knapsec_net::secure_channel::PeerKeys;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config format version this build reads.
pub const DEPLOY_FORMAT: u32 = 1;

/// One party's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyEntry {
    /// `host:port` the others connect to (server and helper; the client listens nowhere).
    #[serde(default)]
    pub address: Option<String>,
    /// The party's public key file (`knapsec keys gen`).
    pub public_key: String,
    /// Address to bind instead of `address` (e.g. `0.0.0.0:7101` behind NAT).
    #[serde(default)]
    pub listen: Option<String>,
}

/// Timeouts, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// How long to keep retrying to reach a party (and how long the helper waits for the
    /// second party of a session).
    #[serde(default = "default_connect")]
    pub connect_s: u64,
    /// Authenticated handshake plus hello, per connection.
    #[serde(default = "default_handshake")]
    pub handshake_s: u64,
    /// Longest wait for any one message during a session; a silent party is declared dead
    /// after it.
    #[serde(default = "default_recv")]
    pub recv_s: u64,
    /// Server and helper: longest wait for the client's next request (the next inference or
    /// the end of the session) between two inferences; a client idle for longer is given up.
    #[serde(default = "default_idle")]
    pub idle_s: u64,
    /// How long a closing party waits for the others to close their side.
    #[serde(default = "default_linger")]
    pub linger_s: u64,
}

fn default_connect() -> u64 {
    30
}
fn default_handshake() -> u64 {
    10
}
fn default_recv() -> u64 {
    60
}
fn default_idle() -> u64 {
    600
}
fn default_linger() -> u64 {
    5
}
fn default_max_frame() -> u64 {
    1024
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_s: default_connect(),
            handshake_s: default_handshake(),
            recv_s: default_recv(),
            idle_s: default_idle(),
            linger_s: default_linger(),
        }
    }
}

/// The file as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Format version of the file (currently 1).
    pub format: u32,
    /// The client's entry.
    pub client: PartyEntry,
    /// The server's entry.
    pub server: PartyEntry,
    /// The helper's entry.
    pub helper: PartyEntry,
    /// This host's private key file; `{role}` is replaced by the party's role.
    pub private_key: String,
    /// Folder holding `model.ron`.
    pub model: String,
    /// Folder holding `weights.safetensors` (server only); default: `model`.
    #[serde(default)]
    pub weights: Option<String>,
    /// Registered name of the secure backend.
    pub backend: String,
    /// The backend's options as RON text (`""` or `"()"` for its defaults).
    #[serde(default)]
    pub options: String,
    /// Connection, handshake, message and closing deadlines.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Largest message accepted from a peer, in MiB.
    #[serde(default = "default_max_frame")]
    pub max_frame_mib: u64,
    /// Most images a client may send in one inference (`knapsec party --batch N`); server
    /// and helper refuse a larger batch. Every frame limit scales with it (a batch's message
    /// carries every image's), so it also bounds what a client can make them hold.
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
}

/// The largest `max_batch` a deployment accepts.
pub const MAX_BATCH: u32 = 256;

fn default_max_batch() -> u32 {
    1
}

/// A loaded config for one role: paths resolved, keys read and cross-checked.
#[derive(Clone, Debug)]
pub struct Deployment {
    /// This party's role.
    pub role: Role,
    /// This party's static key pair.
    pub keypair: KeyPair,
    /// The three parties' public keys.
    pub peers: PeerKeys,
    /// Where the server is reached.
    pub server_address: String,
    /// Where the helper is reached.
    pub helper_address: String,
    /// Where this party listens (server and helper).
    pub listen: Option<String>,
    /// Folder holding `model.ron`.
    pub model_dir: PathBuf,
    /// Folder holding `weights.safetensors`.
    pub weights_dir: PathBuf,
    /// Registered name of the secure backend.
    pub backend: String,
    /// The backend's options as RON text.
    pub options: String,
    /// Connection, handshake, message and closing deadlines.
    pub timeouts: Timeouts,
    /// Largest message accepted from a peer, in bytes.
    pub max_frame: usize,
    /// Most images in one inference.
    pub max_batch: u32,
}

impl Deployment {
    /// Reads `path` for `role`.
    ///
    /// # Errors
    /// [`NetError::Config`] for a missing, unparsable or inconsistent file (missing address,
    /// own private key not matching the listed public key, …); [`NetError::Key`] for key files.
    pub fn load(path: &Path, role: Role) -> Result<Self> {
        let bad = |message: String| NetError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let cfg: DeployConfig = ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
            .from_str(&text)
            .map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_config(cfg, base, role).map_err(|e| match e {
            NetError::Config { message, .. } => bad(message),
            other => other,
        })
    }

    /// Resolves `cfg` for `role`, with relative paths taken from `base`.
    ///
    /// # Errors
    /// As [`Deployment::load`].
    pub fn from_config(cfg: DeployConfig, base: &Path, role: Role) -> Result<Self> {
        let bad = |message: String| NetError::Config {
            path: base.to_path_buf(),
            message,
        };
        if cfg.format != DEPLOY_FORMAT {
            return Err(bad(format!(
                "format {} is not supported (this build reads {DEPLOY_FORMAT})",
                cfg.format
            )));
        }
        let resolve = |p: &str| {
            let p = PathBuf::from(p.replace("{role}", &role.to_string()));
            if p.is_absolute() { p } else { base.join(p) }
        };
        let address = |e: &PartyEntry, r: Role| {
            e.address
                .clone()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| bad(format!("the {r} needs an `address`")))
        };
        let server_address = address(&cfg.server, Role::Server)?;
        let helper_address = address(&cfg.helper, Role::Helper)?;
        let mut peers = PeerKeys::default();
        for (r, entry) in [
            (Role::Client, &cfg.client),
            (Role::Server, &cfg.server),
            (Role::Helper, &cfg.helper),
        ] {
            peers.keys[r.index()] = Some(keys::load_public(&resolve(&entry.public_key), r)?);
        }
        let key_path = resolve(&cfg.private_key);
        let keypair = KeyPair::load(&key_path, role)?;
        let listed: PublicKey = *peers.get(role).expect("all three loaded");
        if keypair.public != listed {
            return Err(bad(format!(
                "this {role}'s private key {} (public {}) does not match the {role} public key {} listed in the config",
                key_path.display(),
                keypair.public.fingerprint(),
                listed.fingerprint()
            )));
        }
        let listen = match role {
            Role::Client => None,
            Role::Server => Some(
                cfg.server
                    .listen
                    .clone()
                    .unwrap_or_else(|| server_address.clone()),
            ),
            Role::Helper => Some(
                cfg.helper
                    .listen
                    .clone()
                    .unwrap_or_else(|| helper_address.clone()),
            ),
        };
        if cfg.max_frame_mib == 0 || cfg.max_frame_mib > 4095 {
            return Err(bad(format!(
                "max_frame_mib must be between 1 and 4095, not {}",
                cfg.max_frame_mib
            )));
        }
        if cfg.max_batch == 0 || cfg.max_batch > MAX_BATCH {
            return Err(bad(format!(
                "max_batch must be between 1 and {MAX_BATCH}, not {}",
                cfg.max_batch
            )));
        }
        let t = &cfg.timeouts;
        if t.connect_s == 0 || t.handshake_s == 0 || t.recv_s == 0 {
            return Err(bad("timeouts must be at least 1 s".into()));
        }
        let model_dir = resolve(&cfg.model);
        let weights_dir = cfg
            .weights
            .as_deref()
            .map(resolve)
            .unwrap_or_else(|| model_dir.clone());
        Ok(Deployment {
            role,
            keypair,
            peers,
            server_address,
            helper_address,
            listen,
            model_dir,
            weights_dir,
            backend: cfg.backend,
            options: cfg.options,
            timeouts: cfg.timeouts,
            max_frame: (cfg.max_frame_mib as usize) << 20,
            max_batch: cfg.max_batch,
        })
    }

    /// The address of `peer` (server or helper).
    pub fn address(&self, peer: Role) -> &str {
        match peer {
            Role::Helper => &self.helper_address,
            _ => &self.server_address,
        }
    }

    /// How long to keep retrying to reach a party.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.connect_s)
    }
    /// Deadline of the authenticated handshake plus hello, per connection.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.handshake_s)
    }
    /// Longest wait for any one message during a session.
    pub fn recv_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.recv_s)
    }
    /// Server and helper: longest wait for the client's next request between inferences.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.idle_s)
    }
    /// How long a closing party waits for the others to close their side.
    pub fn linger(&self) -> Duration {
        Duration::from_secs(self.timeouts.linger_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &Path) {
        for r in Role::ALL {
            KeyPair::generate()
                .unwrap()
                .save(&dir.join("keys"), r, false)
                .unwrap();
        }
    }

    const CONFIG: &str = r#"(
        format: 1,
        client: (public_key: "keys/client.pub"),
        server: (address: "127.0.0.1:7101", public_key: "keys/server.pub"),
        helper: (address: "127.0.0.1:7102", public_key: "keys/helper.pub", listen: "0.0.0.0:7102"),
        private_key: "keys/{role}.key",
        model: "model",
        backend: "securenn",
        timeouts: (recv_s: 5),
    )"#;

    #[test]
    fn loads_and_resolves() {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path());
        let path = dir.path().join("deploy.ron");
        std::fs::write(&path, CONFIG).unwrap();
        let d = Deployment::load(&path, Role::Helper).unwrap();
        assert_eq!(d.listen.as_deref(), Some("0.0.0.0:7102"));
        assert_eq!(d.model_dir, dir.path().join("model"));
        assert_eq!(d.weights_dir, d.model_dir);
        assert_eq!(d.timeouts.recv_s, 5);
        assert_eq!(d.timeouts.connect_s, 30);
        assert_eq!(
            Deployment::load(&path, Role::Server)
                .unwrap()
                .listen
                .as_deref(),
            Some("127.0.0.1:7101")
        );
        assert!(
            Deployment::load(&path, Role::Client)
                .unwrap()
                .listen
                .is_none()
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path());
        let path = dir.path().join("deploy.ron");
        std::fs::write(
            &path,
            CONFIG.replace(
                "private_key: \"keys/{role}.key\"",
                "private_key: \"keys/client.key\"",
            ),
        )
        .unwrap();
        let e = Deployment::load(&path, Role::Server)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is the client key, expected the server key"),
            "{e}"
        );
        // A key pair regenerated after the public key was handed out.
        KeyPair::generate()
            .unwrap()
            .save(&dir.path().join("other"), Role::Server, false)
            .unwrap();
        std::fs::write(&path, CONFIG.replace("keys/{role}.key", "other/{role}.key")).unwrap();
        let e = Deployment::load(&path, Role::Server)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match the server public key"), "{e}");
        for (from, to, role, says) in [
            ("format: 1", "format: 9", Role::Server, "format 9"),
            (
                "address: \"127.0.0.1:7101\", ",
                "",
                Role::Client,
                "needs an `address`",
            ),
        ] {
            std::fs::write(&path, CONFIG.replace(from, to)).unwrap();
            let e = Deployment::load(&path, role).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        std::fs::write(&path, CONFIG.replace("backend", "bakend")).unwrap();
        assert!(Deployment::load(&path, Role::Client).is_err());
    }
}
