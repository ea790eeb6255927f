//! Reading `iptables-save` / `ip6tables-save` output (with or without `-c`): what is
//! installed, with counters. Pure: used to detect a back end, to build removal batches, to
//! verify an apply, to keep rollback snapshots, and to print `--status`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{CHAIN_PREFIX, COMMENT_PREFIX, Direction, IpFamily, Table};

/// Packet and byte counters of a rule or chain policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A chain declaration (`:NAME POLICY [p:b]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedChain {
    /// Chain name.
    pub name: String,
    /// `ACCEPT`/`DROP` for built-in chains, `-` for user chains.
    pub policy: String,
}

/// One rule (`[p:b] -A CHAIN spec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRule {
    /// The chain it is in.
    pub chain: String,
    /// Everything after `-A CHAIN `, as saved.
    pub spec: String,
    /// Counters, when saved with `-c`.
    pub counters: Option<Counters>,
    /// The `--comment` value, if any.
    pub comment: Option<String>,
    /// The `-j`/`-g` target, if any.
    pub target: Option<String>,
}

impl SavedRule {
    fn is_palisade(&self) -> bool {
        self.comment
            .as_deref()
            .is_some_and(|c| c.starts_with(COMMENT_PREFIX))
    }
}

/// One table of a save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTable {
    /// `nat`, `filter`, ...
    pub name: String,
    /// Declared chains, in order.
    pub chains: Vec<SavedChain>,
    /// Rules, in order.
    pub rules: Vec<SavedRule>,
    /// The table's lines from `*name` to `COMMIT` (comments left out), as `*-restore` reads
    /// them back: a rollback snapshot.
    pub text: String,
}

fn is_palisade_chain(name: &str) -> bool {
    name.starts_with(CHAIN_PREFIX)
}

impl SavedTable {
    /// Palisade's chains (`PALISADE_*`) in this table.
    pub fn palisade_chains(&self) -> Vec<&str> {
        self.chains
            .iter()
            .map(|c| c.name.as_str())
            .filter(|c| is_palisade_chain(c))
            .collect()
    }

    /// Rules outside Palisade's chains that lead into them (or carry Palisade's comment):
    /// the jumps to delete before the chains can go.
    pub fn jumps_into_palisade(&self) -> Vec<&SavedRule> {
        self.rules
            .iter()
            .filter(|r| !is_palisade_chain(&r.chain))
            .filter(|r| r.target.as_deref().is_some_and(is_palisade_chain) || r.is_palisade())
            .collect()
    }

    /// The rules of one chain.
    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a SavedRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// Whether a chain is declared.
    pub fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c.name == chain)
    }
}

/// A whole save (one family).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dump {
    /// The tables, in the order saved.
    pub tables: Vec<SavedTable>,
}

impl Dump {
    /// The table called `name`, if present.
    pub fn table(&self, name: &str) -> Option<&SavedTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Whether any table holds a rule (legacy detection: an empty table is not "in use").
    pub fn has_rules(&self) -> bool {
        self.tables.iter().any(|t| !t.rules.is_empty())
    }

    /// Whether any Palisade chain or jump is present in the tables Palisade uses.
    pub fn has_palisade(&self) -> bool {
        Table::ALL.iter().any(|t| {
            self.table(t.name()).is_some_and(|saved| {
                !saved.palisade_chains().is_empty() || !saved.jumps_into_palisade().is_empty()
            })
        })
    }

    /// The restore text of those of `tables` that are present (for a rollback).
    pub fn restore_text(&self, tables: &[Table]) -> String {
        tables
            .iter()
            .filter_map(|t| self.table(t.name()))
            .map(|t| t.text.as_str())
            .collect()
    }
}

/// A line of save output that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected line {line} in save output: {text:?}")]
pub struct SaveParseError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
}

/// Parses `*-save` output (with or without `-c`); `#` comment lines are ignored.
pub fn parse(text: &str) -> Result<Dump, SaveParseError> {
    let mut dump = Dump::default();
    let mut current: Option<SavedTable> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let bad = || SaveParseError {
            line: index + 1,
            text: line.to_owned(),
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if current.is_some() {
                return Err(bad());
            }
            current = Some(SavedTable {
                name: name.to_owned(),
                chains: Vec::new(),
                rules: Vec::new(),
                text: format!("{line}\n"),
            });
            continue;
        }
        let table = current.as_mut().ok_or_else(bad)?;
        table.text.push_str(line);
        table.text.push('\n');
        if line == "COMMIT" {
            if let Some(done) = current.take() {
                dump.tables.push(done);
            }
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let (Some(name), Some(policy)) = (words.next(), words.next()) else {
                return Err(bad());
            };
            table.chains.push(SavedChain {
                name: name.to_owned(),
                policy: policy.to_owned(),
            });
        } else {
            table.rules.push(parse_rule(line).ok_or_else(bad)?);
        }
    }
    match current {
        // A table without COMMIT: the output was cut short.
        Some(_) => Err(SaveParseError {
            line: text.lines().count(),
            text: "(end of output before COMMIT)".to_owned(),
        }),
        None => Ok(dump),
    }
}

fn parse_counters(text: &str) -> Option<Counters> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let (p, b) = inner.split_once(':')?;
    Some(Counters {
        packets: p.parse().ok()?,
        bytes: b.parse().ok()?,
    })
}

fn parse_rule(line: &str) -> Option<SavedRule> {
    let (counters, rest) = if line.starts_with('[') {
        let (c, rest) = line.split_once(' ')?;
        (Some(parse_counters(c)?), rest)
    } else {
        (None, line)
    };
    let rest = rest.strip_prefix("-A ")?;
    let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
    let words = split_words(spec);
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| w == flag)
            .and_then(|i| words.get(i + 1))
            .cloned()
    };
    Some(SavedRule {
        chain: chain.to_owned(),
        spec: spec.to_owned(),
        counters,
        comment: after("--comment"),
        target: after("-j").or_else(|| after("-g")),
    })
}

/// Splits a rule spec into words as the shell would: double quotes group, `\"` escapes.
fn split_words(spec: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The line number a `*-restore` error names: `line 4 failed` (legacy commit),
/// `line 4: RULE_APPEND failed` (nft), or `Error occurred at line: 4` (parse errors).
pub fn failed_line(stderr: &str) -> Option<usize> {
    let mut rest = stderr;
    while let Some(at) = rest.find("line") {
        let after = &rest[at + "line".len()..];
        let digits: String = after
            .trim_start_matches([':', ' '])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if !digits.is_empty() {
            return digits.parse().ok();
        }
        rest = after;
    }
    None
}

/// What `--status` reports for one back end and family.
#[derive(Debug, Clone)]
pub struct FamilyStatus {
    /// The family.
    pub family: IpFamily,
    /// The back end's name (`nft` or `legacy`).
    pub backend: &'static str,
    /// Its `*-save -c` output.
    pub dump: Dump,
}

/// Drop counters summed by family, direction and protocol (from the DROP rules' comments).
pub fn drops(statuses: &[FamilyStatus]) -> BTreeMap<(IpFamily, Direction, String), Counters> {
    let mut sums = BTreeMap::new();
    for status in statuses {
        for table in &status.dump.tables {
            for rule in &table.rules {
                let Some(comment) = &rule.comment else {
                    continue;
                };
                let Some(what) = comment
                    .strip_prefix(COMMENT_PREFIX)
                    .and_then(|c| c.strip_prefix("drop "))
                else {
                    continue;
                };
                let direction = if let Some(p) = what.strip_prefix("inbound ") {
                    (Direction::Inbound, p)
                } else if let Some(p) = what.strip_prefix("outbound ") {
                    (Direction::Outbound, p)
                } else {
                    continue;
                };
                let counters = rule.counters.unwrap_or_default();
                let sum: &mut Counters = sums
                    .entry((status.family, direction.0, direction.1.to_owned()))
                    .or_default();
                sum.packets += counters.packets;
                sum.bytes += counters.bytes;
            }
        }
    }
    sums
}

/// The `--status` text: per back end, family and table, Palisade's jumps and chains with
/// their counters, then the drops per family, direction and protocol. `statuses` holds only
/// what has Palisade's rules; empty means "not installed".
pub fn status_report(statuses: &[FamilyStatus]) -> String {
    let mut out = String::new();
    if statuses.is_empty() {
        out.push_str("palisade capture: not installed\n");
        return out;
    }
    for status in statuses {
        let _ = writeln!(
            out,
            "{} ({}tables-{}):\n    {:>10} {:>12}  rule",
            status.family,
            match status.family {
                IpFamily::V4 => "ip",
                IpFamily::V6 => "ip6",
            },
            status.backend,
            "packets",
            "bytes"
        );
        for table in Table::ALL {
            let Some(saved) = status.dump.table(table.name()) else {
                continue;
            };
            let jumps = saved.jumps_into_palisade();
            let chains = saved.palisade_chains();
            if jumps.is_empty() && chains.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  table {}:", table.name());
            let mut line = |rule: &SavedRule| {
                let c = rule.counters.unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {:>10} {:>12}  -A {} {}",
                    c.packets, c.bytes, rule.chain, rule.spec
                );
            };
            for rule in jumps {
                line(rule);
            }
            for chain in chains {
                for rule in saved.rules_of(chain) {
                    line(rule);
                }
            }
        }
    }
    out.push_str("drops (packets, bytes):\n");
    for ((family, direction, protocol), c) in drops(statuses) {
        let _ = writeln!(
            out,
            "  {family} {} {protocol}: {} packets, {} bytes",
            direction.name(),
            c.packets,
            c.bytes
        );
    }
    out
}
