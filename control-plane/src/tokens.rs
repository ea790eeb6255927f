//! Bootstrap tokens: in directory mode, the per-workload secret that proves "I am workload
//! `namespace/name`" to the identity service before the proxy has a certificate.
//!
//! File format: one `<namespace>/<workload> <token>` per line; `#` starts a comment line;
//! blank lines are ignored. The file is written with mode 0600.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

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

// === impl TokenLedger ===

/// Failed bootstrap attempts a peer address may make in a burst.
pub(crate) const FAILED_ATTEMPT_BURST: u32 = 10;
/// One failed attempt is forgiven per this long.
pub(crate) const FAILED_ATTEMPT_REFILL: Duration = Duration::from_secs(6);
/// A token in use becomes good again this long before its newest certificate expires. A
/// proxy renews over mTLS only while its certificate has more than 5 s left and falls back
/// to its token after that (it cannot present an expiring certificate safely); the wider
/// margin here leaves room for clock differences. A live proxy renews at 70% of the
/// lifetime, so for it the token never becomes good again.
pub(crate) const REUSE_MARGIN_SECS: i64 = 10;
/// Peer addresses tracked at most; beyond, new addresses share one budget.
pub(crate) const MAX_TRACKED_PEERS: usize = 4096;

/// Why a bootstrap token may not be used now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenUseError {
    /// A certificate issued with this token (or renewed from one) is still valid: its
    /// holder renews over mTLS, so a second bootstrap is someone else with the token.
    #[error(
        "the bootstrap token of {workload} was used already and a certificate issued with it \
         is valid until {until}; its holder renews over mTLS"
    )]
    InUse {
        /// The workload.
        workload: NamespacedName,
        /// `notAfter` of the newest such certificate, formatted.
        until: String,
    },
    /// This address failed too many bootstrap attempts lately.
    #[error("too many failed bootstrap attempts from {peer}; retry in {retry_secs}s")]
    RateLimited {
        /// The peer address.
        peer: String,
        /// Seconds until one more attempt is allowed.
        retry_secs: u64,
    },
}

/// Who used which token and until when its certificates live, and a failure budget per
/// peer address. Tokens are then good for one bootstrap per certificate lifetime: a sidecar
/// renews over mTLS while it runs, and a restarted one may bootstrap again once its last
/// certificate has expired. Kept in memory: a restarted control plane starts afresh.
#[derive(Debug, Default)]
pub(crate) struct TokenLedger {
    /// Per workload: digest of the token used and the newest `notAfter` issued from it.
    uses: Mutex<HashMap<NamespacedName, (Digest, i64)>>,
    peers: Mutex<PeerBudgets>,
}

type Digest = [u8; 32];

fn digest(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenLedger {
    /// Refuses a peer address whose failure budget is spent.
    pub fn admit(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), TokenUseError> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = peers.bucket(peer, now);
        if bucket.available(now) >= 1.0 {
            return Ok(());
        }
        let wait = bucket.until_one(now);
        Err(TokenUseError::RateLimited {
            peer: peer.map_or_else(|| "an unknown address".to_owned(), |p| p.to_string()),
            retry_secs: wait.as_secs().max(1),
        })
    }

    /// Charges one failed attempt to `peer`.
    pub fn failed(&self, peer: Option<IpAddr>, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.bucket(peer, now).spend(now);
    }

    /// Claims `token` (already verified) for `workload`: refused while a certificate issued
    /// from an earlier use of the same token is valid at `now_unix`. The claim holds until
    /// [`issued`](Self::issued) or [`release`](Self::release), so two concurrent requests
    /// cannot both bootstrap.
    pub fn claim(
        &self,
        workload: &NamespacedName,
        token: &str,
        now_unix: i64,
    ) -> Result<(), TokenUseError> {
        let d = digest(token);
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((used, until)) = uses.get(workload)
            && *used == d
            && until.saturating_sub(REUSE_MARGIN_SECS) > now_unix
        {
            return Err(TokenUseError::InUse {
                workload: workload.clone(),
                until: crate::tokens::fmt_until(*until),
            });
        }
        // Held as "in use forever" until the certificate is issued or the request fails.
        uses.insert(workload.clone(), (d, i64::MAX));
        Ok(())
    }

    /// Gives back a claim whose request failed before a certificate was issued.
    pub fn release(&self, workload: &NamespacedName) {
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        if uses
            .get(workload)
            .is_some_and(|(_, until)| *until == i64::MAX)
        {
            uses.remove(workload);
        }
    }

    /// Records a certificate issued to `workload` (bootstrap or renewal) valid until
    /// `not_after`, which keeps its token in use until then. `current` is the workload's
    /// token now, so a renewal seen first (after a restart of the control plane) locks it too.
    pub fn issued(&self, workload: &NamespacedName, current: Option<&str>, not_after: i64) {
        let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
        match uses.get_mut(workload) {
            Some((_, until)) if *until == i64::MAX => *until = not_after,
            Some((_, until)) => *until = (*until).max(not_after),
            None => {
                if let Some(token) = current {
                    uses.insert(workload.clone(), (digest(token), not_after));
                }
            }
        }
    }
}

fn fmt_until(unix: i64) -> String {
    if unix == i64::MAX {
        "its bootstrap completes".to_owned()
    } else {
        palisade_certs::ca::fmt_unix(unix)
    }
}

/// A token bucket of failed attempts.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Self {
            tokens: f64::from(FAILED_ATTEMPT_BURST),
            at: now,
        }
    }

    fn available(&self, now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64()
            / FAILED_ATTEMPT_REFILL.as_secs_f64();
        (self.tokens + refilled).min(f64::from(FAILED_ATTEMPT_BURST))
    }

    fn spend(&mut self, now: Instant) {
        self.tokens = (self.available(now) - 1.0).max(-1.0);
        self.at = now;
    }

    fn until_one(&self, now: Instant) -> Duration {
        let missing = (1.0 - self.available(now)).max(0.0);
        FAILED_ATTEMPT_REFILL.mul_f64(missing)
    }
}

/// Budgets by peer address, bounded in size.
#[derive(Debug, Default)]
struct PeerBudgets {
    by_ip: HashMap<IpAddr, Bucket>,
    /// Shared by addresses that find the table full, and by unknown addresses.
    overflow: Option<Bucket>,
}

impl PeerBudgets {
    fn bucket(&mut self, peer: Option<IpAddr>, now: Instant) -> &mut Bucket {
        let Some(ip) = peer else {
            return self.overflow.get_or_insert_with(|| Bucket::full(now));
        };
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= MAX_TRACKED_PEERS {
            // Forget addresses whose budget has refilled: they owe nothing.
            let burst = f64::from(FAILED_ATTEMPT_BURST);
            self.by_ip.retain(|_, b| b.available(now) < burst);
        }
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= MAX_TRACKED_PEERS {
            return self.overflow.get_or_insert_with(|| Bucket::full(now));
        }
        self.by_ip.entry(ip).or_insert_with(|| Bucket::full(now))
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

    #[test]
    fn a_token_is_good_again_once_its_certificates_expire() {
        let ledger = TokenLedger::default();
        let w = NamespacedName::new("shop", "search");
        ledger.claim(&w, "secret-token-0123", 1_000).unwrap();
        // A concurrent second bootstrap is refused while the first is in flight.
        assert!(ledger.claim(&w, "secret-token-0123", 1_000).is_err());
        ledger.issued(&w, Some("secret-token-0123"), 2_000);
        assert!(matches!(
            ledger.claim(&w, "secret-token-0123", 1_989),
            Err(TokenUseError::InUse { .. })
        ));
        // A renewal extends it.
        ledger.issued(&w, Some("secret-token-0123"), 3_000);
        assert!(ledger.claim(&w, "secret-token-0123", 2_500).is_err());
        // About to expire (the proxy's own fallback), or expired: a restarted sidecar may
        // bootstrap again.
        ledger
            .claim(&w, "secret-token-0123", 3_000 - REUSE_MARGIN_SECS)
            .unwrap();
        // Failed before issuing: released.
        ledger.release(&w);
        ledger.claim(&w, "secret-token-0123", 3_000).unwrap();
        // A new token for the workload (the operator rotated it) is not the used one.
        ledger.issued(&w, None, 9_000);
        ledger.claim(&w, "another-token-4567", 3_001).unwrap();
        // A renewal seen first (control plane restarted) locks the current token.
        let p = NamespacedName::new("shop", "payments");
        ledger.issued(&p, Some("payments-token-89ab"), 5_000);
        assert!(ledger.claim(&p, "payments-token-89ab", 4_000).is_err());
    }

    #[test]
    fn failure_budgets_refill_and_the_table_stays_bounded() {
        let ledger = TokenLedger::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..FAILED_ATTEMPT_BURST {
            ledger.admit(Some(ip), t0).unwrap();
            ledger.failed(Some(ip), t0);
        }
        assert!(matches!(
            ledger.admit(Some(ip), t0),
            Err(TokenUseError::RateLimited { .. })
        ));
        // Another address is not affected; time refills the first.
        ledger.admit(Some("10.0.0.2".parse().unwrap()), t0).unwrap();
        ledger.admit(Some(ip), t0 + FAILED_ATTEMPT_REFILL).unwrap();

        // Many addresses, each failing once: the table never grows past its bound.
        for i in 0..(MAX_TRACKED_PEERS as u32 + 500) {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            ledger.failed(Some(peer), t0);
        }
        let peers = ledger.peers.lock().unwrap();
        assert!(
            peers.by_ip.len() <= MAX_TRACKED_PEERS,
            "{}",
            peers.by_ip.len()
        );
    }
}
