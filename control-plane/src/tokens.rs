//! Bootstrap tokens: in directory mode, the per-workload secret that proves "I am workload
//! `namespace/name`" to the identity service before the proxy has a certificate.
//!
//! File format: one `<namespace>/<workload> <token>` per line; `#` starts a comment line;
//! blank lines are ignored. The file is written with mode 0600.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

use crate::model::{NamespacedName, Workload};

/// Bytes of randomness in a generated token (hex-encoded to twice as many characters).
const TOKEN_BYTES: usize = 32;
/// Shortest token accepted from a file: anything shorter is guessable.
const MIN_TOKEN_LEN: usize = 16;

/// Why a token file could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The system random number generator failed.
    #[error("cannot generate a token: the system random number generator failed")]
    Random,
}

/// A secret token; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Bootstrap tokens by (namespace, workload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStore {
    tokens: BTreeMap<NamespacedName, Token>,
}

impl TokenStore {
    /// An empty store (every token is rejected).
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh random token for each workload.
    pub fn generate<'a>(
        workloads: impl IntoIterator<Item = &'a Workload>,
    ) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let mut store = Self::new();
        for w in workloads {
            let mut bytes = [0u8; TOKEN_BYTES];
            rng.fill(&mut bytes).map_err(|_| TokenError::Random)?;
            store.insert(&w.namespace, &w.name, hex(&bytes));
        }
        Ok(store)
    }

    /// Sets the token of one workload.
    pub fn insert(&mut self, namespace: &str, workload: &str, token: impl Into<String>) {
        self.tokens.insert(
            NamespacedName::new(namespace, workload),
            Token(token.into()),
        );
    }

    /// The token of a workload (to hand to its proxy).
    pub fn get(&self, namespace: &str, workload: &str) -> Option<&str> {
        self.tokens
            .get(&NamespacedName::new(namespace, workload))
            .map(|t| t.0.as_str())
    }

    /// Whether `token` is the workload's token, compared in constant time.
    pub fn verify(&self, namespace: &str, workload: &str, token: &str) -> bool {
        match self.tokens.get(&NamespacedName::new(namespace, workload)) {
            Some(expected) => constant_time_eq(expected.0.as_bytes(), token.as_bytes()),
            None => false,
        }
    }

    /// How many workloads have a token.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no workload has a token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Parses the file format; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, TokenError> {
        let mut store = Self::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| TokenError::Parse {
                path: path.to_owned(),
                line: i + 1,
                message,
            };
            let mut parts = line.split_whitespace();
            let (Some(who), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err("expected \"<namespace>/<workload> <token>\"".to_owned()));
            };
            let Some((namespace, workload)) = who.split_once('/') else {
                return Err(err(format!("{who:?} is not <namespace>/<workload>")));
            };
            if namespace.is_empty() || workload.is_empty() || workload.contains('/') {
                return Err(err(format!("{who:?} is not <namespace>/<workload>")));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(err(format!(
                    "the token of {who} is shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            if store.get(namespace, workload).is_some() {
                return Err(err(format!("{who} has a token already")));
            }
            store.insert(namespace, workload, token);
        }
        Ok(store)
    }

    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// The file format.
    pub fn to_file_string(&self) -> String {
        let mut out = String::from("# Palisade bootstrap tokens: <namespace>/<workload> <token>\n");
        for (who, token) in &self.tokens {
            out.push_str(&format!("{who} {}\n", token.0));
        }
        out
    }

    /// Writes the file with mode 0600 (replacing any existing file's contents and mode).
    pub fn write_to(&self, path: &Path) -> Result<(), TokenError> {
        use std::io::Write;
        let werr = |source| TokenError::Write {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(werr)?;
        // `mode` only applies to new files; an existing one may be more open.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(werr)?;
        }
        file.write_all(self.to_file_string().as_bytes())
            .map_err(werr)
    }
}

/// Compares secrets without a timing side channel: both are hashed to equal-length digests
/// (hiding the length too), which are compared without early exit. ring's own helper is
/// deprecated for external use.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let da = ring::digest::digest(&ring::digest::SHA256, a);
    let db = ring::digest::digest(&ring::digest::SHA256, b);
    let diff = da
        .as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies() {
        let text = "# comment\n\nshop/search 0123456789abcdef0123\n  shop/payments   fedcba9876543210fedc  \n";
        let store = TokenStore::parse(Path::new("tokens"), text).unwrap();
        assert_eq!(store.len(), 2);
        assert!(store.verify("shop", "search", "0123456789abcdef0123"));
        assert!(!store.verify("shop", "search", "0123456789abcdef0124"));
        assert!(!store.verify("shop", "search", ""));
        assert!(!store.verify("shop", "other", "0123456789abcdef0123"));
        let again = TokenStore::parse(Path::new("t"), &store.to_file_string()).unwrap();
        assert_eq!(again, store);
        assert!(!format!("{store:?}").contains("0123456789"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            ("shop/search\n", 1),
            ("\nshop-search 0123456789abcdef0123\n", 2),
            ("shop/search short\n", 1),
            (
                "shop/a 0123456789abcdef0123\nshop/a 0123456789abcdef0123\n",
                2,
            ),
            ("/a 0123456789abcdef0123\n", 1),
            ("shop/a 0123456789abcdef0123 extra\n", 1),
        ];
        for (text, line) in cases {
            let err = TokenStore::parse(Path::new("tokens.txt"), text).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("tokens.txt:{line}: ")),
                "{text:?}: {msg}"
            );
        }
    }

    #[test]
    fn generated_tokens_are_long_random_and_written_private() {
        let snapshot = crate::config::load_files(&[(
            "w.yaml",
            "apiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: shop}\nspec: {address: 127.0.1.2}\n---\napiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata: {name: b, namespace: shop}\nspec: {address: 127.0.1.3}\n",
        )])
        .unwrap();
        let store = TokenStore::generate(snapshot.workloads()).unwrap();
        let (a, b) = (
            store.get("shop", "a").unwrap(),
            store.get("shop", "b").unwrap(),
        );
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        store.write_to(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(TokenStore::load(&path).unwrap(), store);
    }
}
