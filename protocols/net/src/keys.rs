//! Static X25519 key pairs that authenticate the parties' channels (digest §10.13: the
//! reference has no authentication at all).
//!
//! `knapsec keys gen --role R -o DIR` writes `DIR/R.key` (private, mode 0600) and
//! `DIR/R.pub` (public, handed to the other two parties). Both are two-line text files:
//!
//! ```text
//! knapsec-key-v1 x25519 public role=server
//! 3f9c…(64 hex digits)
//! ```
//!
//! The role is part of the file so that swapped files are caught when they are loaded,
//! not as an opaque handshake failure later.

use crate::error::{NetError, Result};
use knapsec_core::Role;
use std::path::{Path, PathBuf};

/// First word of every key file.
const MAGIC: &str = "knapsec-key-v1";
/// The Noise pattern of every channel: both static keys known in advance (from the
/// deployment config), mutual authentication, forward secrecy from ephemeral keys.
pub const NOISE_PARAMS: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";

/// Which half of a key pair a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A public key file.
    Public,
    /// A private key file.
    Private,
}

impl KeyKind {
    fn as_str(self) -> &'static str {
        match self {
            KeyKind::Public => "public",
            KeyKind::Private => "private",
        }
    }
}

/// An X25519 public key of a party.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// First 16 hex digits of the key (for logs and error messages).
    pub fn fingerprint(&self) -> String {
        hex(&self.0[..8])
    }
}

/// A party's static key pair.
#[derive(Clone)]
pub struct KeyPair {
    /// The public half.
    pub public: PublicKey,
    pub(crate) private: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair {{ public: {:?}, .. }}", self.public)
    }
}

impl KeyPair {
    /// A fresh key pair from the operating system's random number generator.
    ///
    /// # Errors
    /// If the Noise crypto resolver cannot generate a key.
    pub fn generate() -> Result<Self> {
        let params = NOISE_PARAMS
            .parse()
            .map_err(|e| NetError::Invalid(format!("noise parameters: {e}")))?;
        let kp = snow::Builder::new(params)
            .generate_keypair()
            .map_err(|e| NetError::Invalid(format!("generating a key pair: {e}")))?;
        let mut public = [0u8; 32];
        let mut private = [0u8; 32];
        public.copy_from_slice(&kp.public);
        private.copy_from_slice(&kp.private);
        Ok(KeyPair {
            public: PublicKey(public),
            private,
        })
    }

    /// Writes `dir/ROLE.key` (private, mode 0600, refused if it exists unless `force`) and
    /// `dir/ROLE.pub`; returns both paths.
    ///
    /// # Errors
    /// If a file exists (without `force`) or cannot be written.
    pub fn save(&self, dir: &Path, role: Role, force: bool) -> Result<(PathBuf, PathBuf)> {
        let private = dir.join(format!("{role}.key"));
        let public = dir.join(format!("{role}.pub"));
        if !force && private.exists() {
            return Err(NetError::Key {
                path: private,
                message: "already exists (pass --force to replace it; the old key stops working)"
                    .into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| NetError::File {
            path: dir.to_path_buf(),
            source,
        })?;
        write_key(&private, role, KeyKind::Private, &self.private)?;
        write_key(&public, role, KeyKind::Public, &self.public.0)?;
        Ok((private, public))
    }

    /// Reads a private key file made for `role`; the public half is recomputed.
    ///
    /// # Errors
    /// If the file is missing, malformed, or made for another role.
    pub fn load(path: &Path, role: Role) -> Result<Self> {
        let private = read_key(path, role, KeyKind::Private)?;
        Ok(KeyPair {
            public: PublicKey(x25519_public(&private)),
            private,
        })
    }
}

/// Reads a public key file made for `role`.
///
/// # Errors
/// If the file is missing, malformed, or made for another role.
pub fn load_public(path: &Path, role: Role) -> Result<PublicKey> {
    read_key(path, role, KeyKind::Public).map(PublicKey)
}

/// The X25519 public key of a private key (base-point multiplication by snow's DH type,
/// which derives the public key when the private key is set).
fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    use snow::resolvers::CryptoResolver;
    let mut dh = snow::resolvers::DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("the default resolver provides X25519");
    dh.set(private);
    let mut out = [0u8; 32];
    out.copy_from_slice(dh.pubkey());
    out
}

fn write_key(path: &Path, role: Role, kind: KeyKind, key: &[u8; 32]) -> Result<()> {
    let text = format!(
        "{MAGIC} x25519 {} role={role}\n{}\n",
        kind.as_str(),
        hex(key)
    );
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if kind == KeyKind::Private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        NetError::File {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn read_key(path: &Path, role: Role, kind: KeyKind) -> Result<[u8; 32]> {
    let bad = |message: String| NetError::Key {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    if header.len() != 4 || header[0] != MAGIC || header[1] != "x25519" {
        return Err(bad(format!(
            "not a knapsec key file (expected a first line `{MAGIC} x25519 …`)"
        )));
    }
    if header[2] != kind.as_str() {
        return Err(bad(format!(
            "holds a {} key, expected a {} key",
            header[2],
            kind.as_str()
        )));
    }
    let file_role = header[3].strip_prefix("role=").unwrap_or("");
    if file_role != role.to_string() {
        return Err(bad(format!(
            "is the {file_role} key, expected the {role} key"
        )));
    }
    let body = lines.next().unwrap_or("").trim();
    unhex(body).ok_or_else(|| bad("the second line must be 64 hex digits".into()))
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_save_load() {
        let dir = tempfile::tempdir().unwrap();
        let kp = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        assert_ne!(kp.public, other.public);
        let (private, public) = kp.save(dir.path(), Role::Server, false).unwrap();
        let back = KeyPair::load(&private, Role::Server).unwrap();
        assert_eq!(back.public, kp.public);
        assert_eq!(back.private, kp.private);
        assert_eq!(load_public(&public, Role::Server).unwrap(), kp.public);
        // Wrong role, wrong kind, refusal to overwrite.
        assert!(
            load_public(&public, Role::Helper)
                .unwrap_err()
                .to_string()
                .contains("is the server key")
        );
        assert!(
            load_public(&private, Role::Server)
                .unwrap_err()
                .to_string()
                .contains("private key")
        );
        assert!(
            kp.save(dir.path(), Role::Server, false)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(&public, "knapsec-key-v1 x25519 public role=server\nzz\n").unwrap();
        assert!(
            load_public(&public, Role::Server)
                .unwrap_err()
                .to_string()
                .contains("64 hex digits")
        );
    }
}
