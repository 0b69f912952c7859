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
//!
//! File safety (as ssh does it): a key file is written under a fresh random temporary name
//! opened with `create_new` and without following symbolic links, then moved into place (a
//! private key without `--force` is linked in, so an existing key is never replaced); a
//! private key is mode 0600 and a folder created for it 0700; loading a private key that its
//! group or others may read is refused with the `chmod` that fixes it. A public key that is
//! malformed (not a canonical curve coordinate) or of low order (a Diffie–Hellman with it
//! gives the all-zero secret whatever the private key) is refused when it is loaded.
//! Fingerprints are 128 bits of a BLAKE3 hash of the public key, in groups of four hex
//! digits, to be read aloud and compared over another channel.

use crate::error::{NetError, Result};
use knapsec_core::Role;
use rand::TryRngCore;
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
    /// 128 bits of a BLAKE3 hash of the key, as eight groups of four hex digits
    /// (`3f9c 01ab …`), for logs, error messages and comparing keys over the phone.
    pub fn fingerprint(&self) -> String {
        let h = blake3::derive_key("knapsec-net key fingerprint v1", &self.0);
        let digits = hex(&h[..16]);
        let groups: Vec<&str> = (0..8).map(|i| &digits[4 * i..4 * i + 4]).collect();
        groups.join(" ")
    }

    /// Checks that the key is a canonical X25519 coordinate of a point that is not of low
    /// order.
    ///
    /// # Errors
    /// A message saying what is wrong with the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let k = &self.0;
        // u must be below p = 2^255 - 19 (little-endian, top bit clear).
        let at_least_p = k[31] & 0x80 != 0
            || (k[31] == 0x7f && k[1..31].iter().all(|&b| b == 0xff) && k[0] >= 0xed);
        if at_least_p {
            return Err(
                "is not a canonical X25519 public key (coordinate not below 2^255 - 19)".into(),
            );
        }
        // A clamped scalar is a multiple of the cofactor 8, so its product with a point of
        // order 1, 2, 4 or 8 (on the curve or its twist) is the identity, encoded as zero.
        let probe = x25519(&[0x5a; 32], k);
        if probe == [0u8; 32] {
            return Err(
                "is a low-order X25519 point (every key agreement with it gives the same secret)"
                    .into(),
            );
        }
        Ok(())
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
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        if !force && exists(&private) {
            return Err(already_exists(&private));
        }
        create_private_dir(dir)?;
        write_key(&private, role, KeyKind::Private, &self.private, force)?;
        write_key(&public, role, KeyKind::Public, &self.public.0, true)?;
        Ok((private, public))
    }

    /// Reads a private key file made for `role`; the public half is recomputed.
    ///
    /// # Errors
    /// If the file is missing, malformed, made for another role, or readable by its group or
    /// others (the message gives the `chmod` that fixes it).
    pub fn load(path: &Path, role: Role) -> Result<Self> {
        check_private_mode(path)?;
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
    let key = PublicKey(read_key(path, role, KeyKind::Public)?);
    key.validate().map_err(|message| NetError::Key {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(key)
}

fn x25519_dh() -> Box<dyn snow::types::Dh> {
    use snow::resolvers::CryptoResolver;
    snow::resolvers::DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("the default resolver provides X25519")
}

/// The X25519 public key of a private key (base-point multiplication by snow's DH type,
/// which derives the public key when the private key is set).
fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    let mut dh = x25519_dh();
    dh.set(private);
    let mut out = [0u8; 32];
    out.copy_from_slice(dh.pubkey());
    out
}

/// X25519 of a (clamped) scalar and a coordinate.
fn x25519(scalar: &[u8; 32], point: &[u8; 32]) -> [u8; 32] {
    let mut dh = x25519_dh();
    dh.set(scalar);
    let mut out = [0u8; 32];
    if dh.dh(point, &mut out).is_err() {
        // The default resolver never fails here; treat a failure as the identity.
        return [0u8; 32];
    }
    out
}

fn already_exists(path: &Path) -> NetError {
    NetError::Key {
        path: path.to_path_buf(),
        message: "already exists (pass --force to replace it; the old key stops working)".into(),
    }
}

/// Creates `dir` (and missing parents) with mode 0700; an existing folder is left as it is.
fn create_private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|source| NetError::File {
        path: dir.to_path_buf(),
        source,
    })
}

/// Refuses a private key file that its group or others may read or write (as ssh does).
fn check_private_mode(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| NetError::Key {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(NetError::Key {
                path: path.to_path_buf(),
                message: format!(
                    "is accessible by its group or others (mode {mode:o}); a private key must be \
                     readable by its owner only: run `chmod 600 {}`",
                    path.display()
                ),
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes a key file: a fresh random temporary name in the same folder, opened with
/// `create_new` and without following symbolic links (mode 0600 for a private key, 0644 for
/// a public one), synced, then moved to `path` — by `rename` when `replace`, otherwise by a
/// hard link that fails if `path` exists, so an existing file is never overwritten.
fn write_key(path: &Path, role: Role, kind: KeyKind, key: &[u8; 32], replace: bool) -> Result<()> {
    let text = format!(
        "{MAGIC} x25519 {} role={role}\n{}\n",
        kind.as_str(),
        hex(key)
    );
    let file_err = |source| NetError::File {
        path: path.to_path_buf(),
        source,
    };
    let suffix: [u8; 8] = random_bytes()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", hex(&suffix)));
    let result = (|| {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if kind == KeyKind::Private {
                0o600
            } else {
                0o644
            })
            .custom_flags(libc::O_NOFOLLOW);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        if replace {
            std::fs::rename(&tmp, path)
        } else {
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            linked
        }
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        if source.kind() == std::io::ErrorKind::AlreadyExists && !replace {
            already_exists(path)
        } else {
            file_err(source)
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
pub fn hex(bytes: &[u8]) -> String {
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

/// `n` bytes from the operating system's RNG.
///
/// # Errors
/// If the OS RNG fails.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut out)
        .map_err(|e| NetError::Invalid(format!("OS random generator: {e}")))?;
    Ok(out)
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

    #[cfg(unix)]
    #[test]
    fn private_keys_are_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("new/keys");
        let kp = KeyPair::generate().unwrap();
        let (private, _) = kp.save(&keys, Role::Helper, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys), 0o700, "a folder made for keys is private");
        assert_eq!(mode(&private), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A private key readable by others is refused, with the chmod that fixes it.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyPair::load(&private, Role::Helper)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("chmod 600 {}", private.display())),
            "{e}"
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(KeyPair::load(&private, Role::Helper).is_err());
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            KeyPair::load(&private, Role::Helper).unwrap().public,
            kp.public
        );
    }

    #[cfg(unix)]
    #[test]
    fn saving_never_follows_or_replaces_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "precious").unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        // A symbolic link where the private key goes (dangling or not) counts as an existing key.
        std::os::unix::fs::symlink(&target, keys.join("server.key")).unwrap();
        let kp = KeyPair::generate().unwrap();
        let e = kp.save(&keys, Role::Server, false).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        std::fs::remove_file(keys.join("server.key")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), keys.join("server.key")).unwrap();
        assert!(kp.save(&keys, Role::Server, false).is_err());
        assert!(
            !dir.path().join("nowhere").exists(),
            "the dangling link was not followed"
        );
        // With --force the link itself is replaced by the key file; its target is untouched.
        kp.save(&keys, Role::Server, true).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(
            !std::fs::symlink_metadata(keys.join("server.key"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn fingerprints_are_128_bit_hashes_in_groups() {
        let kp = KeyPair::generate().unwrap();
        let fp = kp.public.fingerprint();
        let groups: Vec<&str> = fp.split(' ').collect();
        assert_eq!(groups.len(), 8, "{fp}");
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit()))
        );
        // A hash, not a prefix of the key.
        assert!(!hex(&kp.public.0).starts_with(&groups[..4].concat()));
        // Keys that share their first bytes have unrelated fingerprints.
        let mut other = kp.public;
        other.0[31] ^= 1;
        assert_ne!(other.fingerprint(), fp);
        assert_eq!(other.fingerprint().len(), fp.len());
    }

    #[test]
    fn low_order_and_malformed_public_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.pub");
        let p = |hex: &str| format!("knapsec-key-v1 x25519 public role=client\n{hex}\n");
        // The points of order 1, 2, 4, 8 (RFC 7748 §6 / libsodium's blocklist), p, p + 1.
        let bad = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            // a valid key with the (ignored) top bit set: not canonical
            "0900000000000000000000000000000000000000000000000000000000000080",
        ];
        for (i, b) in bad.iter().enumerate() {
            std::fs::write(&path, p(b)).unwrap();
            let e = load_public(&path, Role::Client).unwrap_err().to_string();
            assert!(
                e.contains("low-order") || e.contains("canonical"),
                "key {i}: {e}"
            );
        }
        let good = KeyPair::generate().unwrap().public;
        std::fs::write(&path, p(&hex(&good.0))).unwrap();
        assert_eq!(load_public(&path, Role::Client).unwrap(), good);
        // The base point itself is a fine public key.
        std::fs::write(
            &path,
            p("0900000000000000000000000000000000000000000000000000000000000000"),
        )
        .unwrap();
        assert!(load_public(&path, Role::Client).is_ok());
    }
}
