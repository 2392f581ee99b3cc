//! Signed heads: the capturing process signs the chain head with a key only it holds, so that a
//! validator holding the public key can tell the stream was written by that process and not
//! rewritten since (the hashes alone prove only internal consistency).
//!
//! ```text
//! signed bytes = "walstream/head/v1" (17 ASCII bytes) | generation u64 LE | seq u64 LE |
//!                head hash (32 bytes)
//! ed25519      : RFC 8032 Ed25519 (pure) over the signed bytes; public key 32 bytes, signature 64
//! secp256k1    : ECDSA over SHA-256(signed bytes), RFC 6979 nonces; public key 33 bytes (SEC1
//!                compressed), signature 64 bytes r | s big-endian with low s
//! ```
//! Key files are one text line each (docs/FORMAT.md, "Signed heads"):
//! `walstream-secret-key ALGORITHM HEX` and `walstream-public-key ALGORITHM HEX`. The secret key
//! stays in memory in [`Signer`] (zeroized on drop); it is never logged, never in status JSON
//! and never written into a stream: only public keys and signatures are.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use crate::record::pb::{self, head_signature};
use crate::record::{hex, Hash};

/// URI parameter naming the signing key file of a database.
pub const SIGNING_KEY_URI_PARAM: &str = "walstream_signing_key";
/// Environment variable naming the signing key file (the URI parameter wins).
pub const SIGNING_KEY_ENV: &str = "WALSTREAM_SIGNING_KEY";
/// Domain separation prefix of the signed bytes.
pub const HEAD_DOMAIN: &[u8; 17] = b"walstream/head/v1";
/// Length of the signed bytes.
pub const SIGNED_BYTES: usize = 17 + 8 + 8 + 32;

const SECRET_TAG: &str = "walstream-secret-key";
const PUBLIC_TAG: &str = "walstream-public-key";

/// A signature algorithm. The key file chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Ed25519,
    Secp256k1,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Ed25519, Algorithm::Secp256k1];

    /// The name used in key files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Secp256k1 => "secp256k1",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    pub fn public_key_len(self) -> usize {
        match self {
            Algorithm::Ed25519 => 32,
            Algorithm::Secp256k1 => 33,
        }
    }

    pub fn to_pb(self) -> head_signature::Algorithm {
        match self {
            Algorithm::Ed25519 => head_signature::Algorithm::Ed25519,
            Algorithm::Secp256k1 => head_signature::Algorithm::Secp256k1Sha256,
        }
    }

    /// The algorithm of a decoded record's field (`None`: unknown or unspecified).
    pub fn from_pb(value: i32) -> Option<Self> {
        match head_signature::Algorithm::try_from(value).ok()? {
            head_signature::Algorithm::Ed25519 => Some(Algorithm::Ed25519),
            head_signature::Algorithm::Secp256k1Sha256 => Some(Algorithm::Secp256k1),
            head_signature::Algorithm::Unspecified => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The bytes a head signature covers.
pub fn signed_bytes(generation: u64, seq: u64, head: &Hash) -> [u8; SIGNED_BYTES] {
    let mut out = [0u8; SIGNED_BYTES];
    out[..17].copy_from_slice(HEAD_DOMAIN);
    out[17..25].copy_from_slice(&generation.to_le_bytes());
    out[25..33].copy_from_slice(&seq.to_le_bytes());
    out[33..].copy_from_slice(head);
    out
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The problem never quotes the file's content.
    #[error("key file {path}: {problem}")]
    Format { path: PathBuf, problem: String },
    #[error("{0} already exists (walstream never overwrites a key file)")]
    Exists(PathBuf),
    #[error("no usable randomness for a new key: {0}")]
    Random(std::io::Error),
}

/// A public key: what verifies signatures and what a signature record names.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: Algorithm,
    bytes: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.algorithm, hex(&self.bytes))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm, hex(&self.bytes))
    }
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    #[error("unknown signature algorithm {0}")]
    UnknownAlgorithm(i32),
    #[error("signed by another key ({found}); expected {expected}")]
    OtherKey { found: String, expected: String },
    #[error("signature is {0} bytes, not 64")]
    Length(usize),
    #[error("bad signature: it does not verify with {0}")]
    Invalid(String),
}

impl PublicKey {
    /// Checks that `bytes` is a valid public key of `algorithm`.
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != algorithm.public_key_len() {
            return Err(format!(
                "a {algorithm} public key is {} bytes, this one is {}",
                algorithm.public_key_len(),
                bytes.len()
            ));
        }
        let valid = match algorithm {
            Algorithm::Ed25519 => {
                let arr: [u8; 32] = bytes.try_into().expect("length checked");
                ed25519_dalek::VerifyingKey::from_bytes(&arr).is_ok_and(|k| !k.is_weak())
            }
            Algorithm::Secp256k1 => k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).is_ok(),
        };
        if !valid {
            return Err(format!("not a valid {algorithm} public key"));
        }
        Ok(Self {
            algorithm,
            bytes: bytes.to_vec(),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The `.pub` file's line.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_TAG} {} {}\n", self.algorithm, hex(&self.bytes))
    }

    /// Parses a public key file: `walstream-public-key ALGORITHM HEX` (comment lines starting
    /// with `#` and blank lines are ignored), or a bare hex key (64 digits: ed25519; 66 digits,
    /// SEC1 compressed: secp256k1).
    pub fn parse_text(text: &str) -> Result<Self, String> {
        let line = key_line(text)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let (algorithm, hex_key) = match words.as_slice() {
            [tag, alg, key] if *tag == PUBLIC_TAG => (
                Algorithm::parse(alg).ok_or_else(|| unknown_algorithm(alg))?,
                *key,
            ),
            [tag, ..] if *tag == SECRET_TAG => {
                return Err("this is a secret key file; give the public key (the .pub file)".into())
            }
            [key] => match key.len() {
                64 => (Algorithm::Ed25519, *key),
                66 => (Algorithm::Secp256k1, *key),
                n => {
                    return Err(format!(
                        "a bare hex public key has 64 (ed25519) or 66 (secp256k1) digits, not {n}"
                    ))
                }
            },
            _ => return Err(format!("expected `{PUBLIC_TAG} ALGORITHM HEX`")),
        };
        let bytes = parse_hex(hex_key).ok_or("the key is not hex")?;
        Self::from_bytes(algorithm, &bytes)
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_text(&text).map_err(|problem| KeyError::Format {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Verifies `signature` over `message` made with this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureProblem> {
        let invalid = || SignatureProblem::Invalid(self.to_string());
        let sig: [u8; 64] = signature
            .try_into()
            .map_err(|_| SignatureProblem::Length(signature.len()))?;
        match self.algorithm {
            Algorithm::Ed25519 => {
                let arr: [u8; 32] = self.bytes.as_slice().try_into().expect("validated");
                let key = ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|_| invalid())?;
                let sig = ed25519_dalek::Signature::from_bytes(&sig);
                key.verify_strict(message, &sig).map_err(|_| invalid())
            }
            Algorithm::Secp256k1 => {
                use k256::ecdsa::signature::Verifier;
                let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&self.bytes)
                    .map_err(|_| invalid())?;
                let sig = k256::ecdsa::Signature::from_slice(&sig).map_err(|_| invalid())?;
                // k256 also refuses a high s; this keeps the rule explicit (signatures are not
                // malleable).
                if sig.normalize_s().is_some() {
                    return Err(invalid());
                }
                key.verify(message, &sig).map_err(|_| invalid())
            }
        }
    }

    /// Checks a `HeadSignature` record's algorithm, key and signature against this key. Its
    /// generation, seq and head hash are what it claims to sign; the caller checks that they
    /// are the chain's.
    pub fn check(&self, record: &pb::HeadSignature) -> Result<(), SignatureProblem> {
        let algorithm = Algorithm::from_pb(record.algorithm)
            .ok_or(SignatureProblem::UnknownAlgorithm(record.algorithm))?;
        if algorithm != self.algorithm || record.public_key != self.bytes {
            return Err(SignatureProblem::OtherKey {
                found: format!("{algorithm} {}", hex(&record.public_key)),
                expected: self.to_string(),
            });
        }
        let head: Hash = record
            .head_hash
            .as_slice()
            .try_into()
            .map_err(|_| SignatureProblem::Invalid(self.to_string()))?;
        self.verify(
            &signed_bytes(record.generation, record.seq, &head),
            &record.signature,
        )
    }
}

fn unknown_algorithm(alg: &str) -> String {
    let known: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    format!("unknown algorithm {alg:?} (known: {})", known.join(", "))
}

/// The one key line of a key file.
fn key_line(text: &str) -> Result<&str, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or("the file holds no key")?;
    if lines.next().is_some() {
        return Err("the file holds more than one key line".into());
    }
    Ok(line)
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

enum SecretKey {
    Ed25519(ed25519_dalek::SigningKey),
    Secp256k1(k256::ecdsa::SigningKey),
}

/// A secret signing key, loaded from a key file. Its `Debug` shows only the public key; the
/// secret is zeroized when it is dropped.
pub struct Signer {
    secret: SecretKey,
    public: PublicKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({})", self.public)
    }
}

/// Two signers are equal when they have the same public key.
impl PartialEq for Signer {
    fn eq(&self, other: &Self) -> bool {
        self.public == other.public
    }
}

impl Signer {
    /// The signer of a 32-byte secret (ed25519: the RFC 8032 seed; secp256k1: the scalar,
    /// big-endian, which must be in 1..n).
    pub fn from_secret(algorithm: Algorithm, secret: &[u8; 32]) -> Option<Self> {
        let (secret, public) = match algorithm {
            Algorithm::Ed25519 => {
                let key = ed25519_dalek::SigningKey::from_bytes(secret);
                let public = key.verifying_key().to_bytes().to_vec();
                (SecretKey::Ed25519(key), public)
            }
            Algorithm::Secp256k1 => {
                let key = k256::ecdsa::SigningKey::from_slice(secret).ok()?;
                let public = key
                    .verifying_key()
                    .to_encoded_point(true)
                    .as_bytes()
                    .to_vec();
                (SecretKey::Secp256k1(key), public)
            }
        };
        Some(Self {
            secret,
            public: PublicKey {
                algorithm,
                bytes: public,
            },
        })
    }

    /// A new random key (32 bytes from the operating system's random source).
    pub fn generate(algorithm: Algorithm) -> Result<Self, KeyError> {
        loop {
            let mut seed = Zeroizing::new([0u8; 32]);
            File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut seed[..]))
                .map_err(KeyError::Random)?;
            // A secp256k1 scalar out of range has probability about 2^-128: draw again.
            if let Some(signer) = Self::from_secret(algorithm, &seed) {
                return Ok(signer);
            }
        }
    }

    /// Parses a secret key file's text: `walstream-secret-key ALGORITHM HEX` (64 hex digits;
    /// `#` comment lines and blank lines are ignored). Error messages never quote the text.
    pub fn parse_text(text: &str) -> Result<Self, String> {
        let line = key_line(text)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let (algorithm, hex_key) = match words.as_slice() {
            [tag, alg, key] if *tag == SECRET_TAG => (
                Algorithm::parse(alg).ok_or_else(|| unknown_algorithm(alg))?,
                *key,
            ),
            [tag, ..] if *tag == PUBLIC_TAG => return Err(
                "this is a public key file; the signing key is the secret key file (without .pub)"
                    .into(),
            ),
            _ => return Err(format!("expected `{SECRET_TAG} ALGORITHM HEX`")),
        };
        let mut bytes = Zeroizing::new(parse_hex(hex_key).ok_or("the key is not hex")?);
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| format!("the secret is {} bytes, not 32", bytes.len()))?,
        );
        bytes.zeroize();
        Self::from_secret(algorithm, &secret)
            .ok_or_else(|| format!("not a valid {algorithm} secret key"))
    }

    /// Reads a secret key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let mut text = Zeroizing::new(String::new());
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|source| KeyError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse_text(&text).map_err(|problem| KeyError::Format {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// The secret key file's text. Handle with care: it is the secret.
    pub fn secret_text(&self) -> Zeroizing<String> {
        let secret = Zeroizing::new(match &self.secret {
            SecretKey::Ed25519(k) => k.to_bytes().to_vec(),
            SecretKey::Secp256k1(k) => k.to_bytes().to_vec(),
        });
        // Written into a buffer that is zeroized too, never through an intermediate string.
        let mut text = Zeroizing::new(String::with_capacity(256));
        text.push_str(
            "# walstream signing key: secret, keep it private. Public key in the .pub file.\n",
        );
        text.push_str(SECRET_TAG);
        text.push(' ');
        text.push_str(self.public.algorithm.name());
        text.push(' ');
        for b in secret.iter() {
            use std::fmt::Write as _;
            let _ = write!(text, "{b:02x}");
        }
        text.push('\n');
        text
    }

    /// Writes the secret key to `path` (created with mode 0600; an existing file is never
    /// replaced) and the public key to `path` + `.pub` (mode 0644). Returns the public key file.
    pub fn write_new(&self, path: &Path) -> Result<PathBuf, KeyError> {
        let pub_path = public_key_path(path);
        for p in [path, pub_path.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(KeyError::Exists(p.to_path_buf()));
            }
        }
        write_new_file(path, 0o600, self.secret_text().as_bytes())?;
        write_new_file(&pub_path, 0o644, self.public.to_text().as_bytes())?;
        Ok(pub_path)
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn algorithm(&self) -> Algorithm {
        self.public.algorithm
    }

    /// Signs `message` (see the module documentation for each algorithm's scheme).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        match &self.secret {
            SecretKey::Ed25519(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(message).to_bytes()
            }
            SecretKey::Secp256k1(k) => {
                use k256::ecdsa::signature::Signer as _;
                let sig: k256::ecdsa::Signature = k.sign(message);
                let sig = sig.normalize_s().unwrap_or(sig);
                sig.to_bytes().into()
            }
        }
    }

    /// The signature record over the head `head` of transaction `seq` of `generation` (seq 0:
    /// the snapshot hash).
    pub fn sign_head(&self, generation: u64, seq: u64, head: &Hash) -> pb::HeadSignature {
        let signature = self.sign(&signed_bytes(generation, seq, head));
        pb::HeadSignature {
            generation,
            seq,
            head_hash: head.to_vec(),
            algorithm: self.public.algorithm.to_pb() as i32,
            public_key: self.public.bytes.clone(),
            signature: signature.to_vec(),
        }
    }
}

/// `KEYFILE.pub` for `KEYFILE`.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

fn write_new_file(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists(path.to_path_buf()),
        _ => KeyError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: [u8; 32] = [7; 32];

    fn signers() -> Vec<Signer> {
        Algorithm::ALL
            .iter()
            .map(|a| Signer::from_secret(*a, &SEED).unwrap())
            .collect()
    }

    #[test]
    fn signed_bytes_layout_is_pinned() {
        let mut expected = b"walstream/head/v1".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(&258u64.to_le_bytes());
        expected.extend_from_slice(&[0xab; 32]);
        assert_eq!(signed_bytes(3, 258, &[0xab; 32]).to_vec(), expected);
        assert_eq!(expected.len(), SIGNED_BYTES);
    }

    #[test]
    fn signatures_verify_and_bind_every_field() {
        for signer in signers() {
            let key = signer.public_key().clone();
            let good = signer.sign_head(2, 9, &[1; 32]);
            key.check(&good).unwrap();
            // Deterministic (Ed25519, RFC 6979): the same head signs the same way.
            assert_eq!(signer.sign_head(2, 9, &[1; 32]), good);
            let mut tampered = Vec::new();
            for i in 0..4 {
                let mut r = good.clone();
                match i {
                    0 => r.generation = 3,
                    1 => r.seq = 10,
                    2 => r.head_hash[31] ^= 1,
                    _ => r.signature[10] ^= 1,
                }
                tampered.push(r);
            }
            for r in tampered {
                assert!(
                    matches!(key.check(&r), Err(SignatureProblem::Invalid(_))),
                    "{r:?}"
                );
            }
        }
    }

    #[test]
    fn another_key_is_named() {
        let a = Signer::from_secret(Algorithm::Ed25519, &SEED).unwrap();
        let b = Signer::from_secret(Algorithm::Ed25519, &[8; 32]).unwrap();
        let err = b
            .public_key()
            .check(&a.sign_head(1, 1, &[0; 32]))
            .unwrap_err();
        assert!(matches!(err, SignatureProblem::OtherKey { .. }), "{err}");
        let k = Signer::from_secret(Algorithm::Secp256k1, &SEED).unwrap();
        let err = k
            .public_key()
            .check(&a.sign_head(1, 1, &[0; 32]))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("signed by another key (ed25519 "),
            "{err}"
        );
        // A record that names the right key but carries another key's signature.
        let mut forged = a.sign_head(1, 1, &[0; 32]);
        forged.signature = b.sign(&signed_bytes(1, 1, &[0; 32])).to_vec();
        assert!(matches!(
            a.public_key().check(&forged),
            Err(SignatureProblem::Invalid(_))
        ));
    }

    #[test]
    fn secp256k1_high_s_is_refused() {
        use k256::elliptic_curve::ops::Neg;
        let signer = Signer::from_secret(Algorithm::Secp256k1, &SEED).unwrap();
        let msg = signed_bytes(1, 2, &[3; 32]);
        let low = k256::ecdsa::Signature::from_slice(&signer.sign(&msg)).unwrap();
        assert!(low.normalize_s().is_none(), "signatures are low-s");
        let (r, s) = low.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r, s.neg()).unwrap();
        assert!(signer.public_key().verify(&msg, &high.to_bytes()).is_err());
        signer.public_key().verify(&msg, &low.to_bytes()).unwrap();
    }

    #[test]
    fn key_files_roundtrip_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        for algorithm in Algorithm::ALL {
            let path = dir.path().join(format!("{algorithm}.key"));
            let signer = Signer::generate(algorithm).unwrap();
            let pub_path = signer.write_new(&path).unwrap();
            assert_eq!(pub_path, dir.path().join(format!("{algorithm}.key.pub")));
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let loaded = Signer::load(&path).unwrap();
            assert_eq!(loaded, signer);
            assert_eq!(loaded.sign(b"x"), signer.sign(b"x"));
            assert_eq!(&PublicKey::load(&pub_path).unwrap(), signer.public_key());
            let before = std::fs::read(&path).unwrap();
            let again = Signer::generate(algorithm).unwrap();
            assert!(matches!(again.write_new(&path), Err(KeyError::Exists(_))));
            assert_eq!(std::fs::read(&path).unwrap(), before);
            // The wrong file for the job is named as such.
            assert!(Signer::load(&pub_path)
                .unwrap_err()
                .to_string()
                .contains("public key file"));
            assert!(PublicKey::load(&path)
                .unwrap_err()
                .to_string()
                .contains("secret key file"));
        }
    }

    #[test]
    fn key_file_errors_never_quote_the_secret() {
        let secret = "walstream-secret-key ed25519 zz".to_string() + &"07".repeat(31);
        let err = Signer::parse_text(&secret).unwrap_err();
        assert!(!err.contains("0707"), "{err}");
        let err = Signer::parse_text(&format!("walstream-secret-key ed448 {}", "07".repeat(32)))
            .unwrap_err();
        assert!(
            err.contains("unknown algorithm") && !err.contains("0707"),
            "{err}"
        );
        let text = Signer::from_secret(Algorithm::Ed25519, &SEED)
            .unwrap()
            .secret_text();
        let signer = Signer::parse_text(&text).unwrap();
        assert!(!format!("{signer:?}").contains("0707"));
        assert!(Signer::parse_text(&format!("{}\n{}", *text, *text)).is_err());
    }

    #[test]
    fn bare_hex_public_keys_are_accepted() {
        for signer in signers() {
            let bare = hex(signer.public_key().bytes());
            assert_eq!(&PublicKey::parse_text(&bare).unwrap(), signer.public_key());
        }
        assert!(
            PublicKey::parse_text(&"00".repeat(33)).is_err(),
            "not a curve point"
        );
    }

    // Computed independently with Python's `cryptography` (OpenSSL; RFC 6979 for ECDSA).
    const VECTOR_ED25519: (&str, &str) = (
        "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c",
        "96f8f5fca2821a83dcb0cdfd89ee3684f7ca08ca92eac018776c12694aeffc47\
         f76af47a2561efc1bc867c43aede8317e872f7eecef3664ad947ba7428a8240d",
    );
    const VECTOR_SECP256K1: (&str, &str) = (
        "02989c0b76cb563971fdc9bef31ec06c3560f3249d6ee9e5d83c57625596e05f6f",
        "8b99f967f061eeb5c3c4d3e8ca8f119191414d270430ca5c61b2c3cc5253b3c1\
         2ddd43842ba744066fa79c50d7af312c3229db4e58d4a5ab25463ca629bff610",
    );

    /// Test vectors for other implementations (docs/FORMAT.md quotes them).
    #[test]
    fn documented_test_vectors() {
        let head: Hash = [0x11; 32];
        let msg = signed_bytes(1, 2, &head);
        assert_eq!(
            hex(&msg),
            "77616c73747265616d2f686561642f763101000000000000000200000000000000\
             1111111111111111111111111111111111111111111111111111111111111111"
        );
        let ed = Signer::from_secret(Algorithm::Ed25519, &SEED).unwrap();
        let k = Signer::from_secret(Algorithm::Secp256k1, &SEED).unwrap();
        for (signer, (public, signature)) in [(ed, VECTOR_ED25519), (k, VECTOR_SECP256K1)] {
            assert_eq!(
                hex(signer.public_key().bytes()),
                public,
                "{} public key",
                signer.algorithm()
            );
            assert_eq!(
                hex(&signer.sign(&msg)),
                signature,
                "{} signature",
                signer.algorithm()
            );
            signer
                .public_key()
                .verify(&msg, &parse_hex(signature).unwrap())
                .unwrap();
        }
    }
}
