//! Kubernetes YAML in and out, read the way `kubectl` reads it.
//!
//! `kubectl` turns YAML into JSON with go-yaml v2, which resolves plain (unquoted) scalars
//! with YAML 1.1 rules: `0644` is the octal integer 420, `yes`/`no`/`on`/`off`/`y`/`n` (in
//! the spellings YAML 1.1 lists) are booleans, `0x1F` is hex, `1_000` is 1000, `~` is null.
//! A YAML 1.2 reader would read several of these as strings and so change what a manifest
//! means. The events come from `yaml-rust2`'s parser; the scalar resolution here is ours.
//!
//! Where go-yaml v2 and the YAML 1.1 type regexps disagree, go-yaml wins (it is what the
//! cluster would have seen): `1e3` and `09` are floats, `0o17` is 15, `1:30` and timestamps
//! stay strings. Mapping keys that resolve to non-strings are turned into their text
//! (`on:` is the key `"true"`), as `kubectl` does.
//!
//! PyYAML departs from YAML 1.1 in one place: it reads `y` and `n` as strings. Those are
//! booleans here, as in go-yaml; the writer quotes them, so written output reads the same in
//! both.
//!
//! Writing is the other direction: every string that any YAML reader (1.1 or 1.2) could take
//! for something else is double-quoted, so `yaml.safe_load` and `kubectl` read back exactly
//! the tree that was written.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::value::{Map, Value};

/// Nodes one YAML stream may expand to (aliases included): bounds an alias "billion laughs".
pub const MAX_NODES: usize = 1_000_000;
/// Nesting depth a document may reach (serde_json's limit for JSON is the same).
pub const MAX_DEPTH: usize = 128;

/// Why a YAML stream could not be read.
#[derive(Debug, thiserror::Error)]
#[error("document {document}: line {line} column {column}: {message}")]
pub struct YamlError {
    /// The 1-based number of the document being read.
    pub document: usize,
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column of the problem.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// One document of a stream, numbered from 1 in the order it appears.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based position in the stream.
    pub number: usize,
    /// Its content (`Null` for an empty document).
    pub value: Value,
}

// === reading ===

/// An anchored node, kept for its aliases with what it costs to copy.
struct Anchored {
    value: Value,
    nodes: usize,
    depth: usize,
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        map: Map,
        key: Option<PendingKey>,
        merges: Vec<Value>,
        anchor: usize,
    },
}

enum PendingKey {
    Key(String),
    Merge,
}

struct Reader {
    document: usize,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    nodes: usize,
    done: Option<Value>,
}

/// Reads every document of a YAML stream (`---`-separated).
pub fn read_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    // Editors on Windows write a byte-order mark; it is no part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser::new_from_str(text);
    let mut reader = Reader {
        document: 0,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        done: None,
    };
    let mut documents = Vec::new();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            document: reader.document.max(1),
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_owned(),
        })?;
        match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::Nothing => {}
            Event::DocumentStart => {
                reader.document += 1;
                reader.stack.clear();
                reader.done = None;
                // Anchors are scoped to their document.
                reader.anchors.clear();
            }
            Event::DocumentEnd => documents.push(Document {
                number: reader.document,
                value: reader.done.take().unwrap_or(Value::Null),
            }),
            other => reader.on_event(other, mark)?,
        }
    }
    Ok(documents)
}

impl Reader {
    fn error(&self, mark: Marker, message: impl Into<String>) -> YamlError {
        YamlError {
            document: self.document.max(1),
            line: mark.line(),
            column: mark.col() + 1,
            message: message.into(),
        }
    }

    fn depth(&self) -> usize {
        self.stack.len()
    }

    fn count(&mut self, nodes: usize, mark: Marker) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(self.error(
                mark,
                format!("more than {MAX_NODES} nodes (aliases expanded)"),
            ));
        }
        Ok(())
    }

    fn on_event(&mut self, event: Event, mark: Marker) -> Result<(), YamlError> {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, mark)?;
                if self.expects_key() {
                    let key = if style == TScalarStyle::Plain && tag.is_none() && text == "<<" {
                        PendingKey::Merge
                    } else {
                        let value =
                            scalar(&text, style, tag.as_ref()).map_err(|m| self.error(mark, m))?;
                        self.remember(anchor, &value, 1, 0);
                        PendingKey::Key(key_text(&value).map_err(|m| self.error(mark, m))?)
                    };
                    self.set_key(key);
                    return Ok(());
                }
                let value = scalar(&text, style, tag.as_ref()).map_err(|m| self.error(mark, m))?;
                self.remember(anchor, &value, 1, 0);
                self.complete(value, mark)
            }
            Event::Alias(id) => {
                let Some(anchored) = self.anchors.get(&id) else {
                    return Err(self.error(mark, "alias to an unknown anchor"));
                };
                let (value, nodes, depth) =
                    (anchored.value.clone(), anchored.nodes, anchored.depth);
                if self.depth() + depth > MAX_DEPTH {
                    return Err(self.error(mark, format!("nested deeper than {MAX_DEPTH}")));
                }
                self.count(nodes, mark)?;
                if self.expects_key() {
                    let key = key_text(&value).map_err(|m| self.error(mark, m))?;
                    self.set_key(PendingKey::Key(key));
                    return Ok(());
                }
                self.complete(value, mark)
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                self.count(1, mark)?;
                if self.expects_key() {
                    return Err(self.error(mark, "a mapping key must be a scalar"));
                }
                if self.depth() >= MAX_DEPTH {
                    return Err(self.error(mark, format!("nested deeper than {MAX_DEPTH}")));
                }
                let is_seq = matches!(event, Event::SequenceStart(..));
                check_collection_tag(tag.as_ref(), is_seq).map_err(|m| self.error(mark, m))?;
                self.stack.push(if is_seq {
                    Frame::Seq {
                        items: Vec::new(),
                        anchor,
                    }
                } else {
                    Frame::Map {
                        map: Map::new(),
                        key: None,
                        merges: Vec::new(),
                        anchor,
                    }
                });
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq { items, anchor }) => {
                    let value = Value::Array(items);
                    self.remember_collection(anchor, &value);
                    self.complete(value, mark)
                }
                _ => Err(self.error(mark, "unbalanced sequence end")),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    mut map,
                    merges,
                    anchor,
                    ..
                }) => {
                    // `<<` merge keys: keys written in the mapping win, then earlier merged
                    // mappings over later ones (YAML 1.1 merge type, as go-yaml applies it).
                    for source in merges {
                        let sources = match source {
                            Value::Array(items) => items,
                            other => vec![other],
                        };
                        for item in sources {
                            let Value::Object(entries) = item else {
                                return Err(self.error(mark, "a `<<` merge needs mappings"));
                            };
                            for (k, v) in entries {
                                map.entry(k).or_insert(v);
                            }
                        }
                    }
                    let value = Value::Object(map);
                    self.remember_collection(anchor, &value);
                    self.complete(value, mark)
                }
                _ => Err(self.error(mark, "unbalanced mapping end")),
            },
            _ => Ok(()),
        }
    }

    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn set_key(&mut self, pending: PendingKey) {
        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
            *key = Some(pending);
        }
    }

    fn remember(&mut self, anchor: usize, value: &Value, nodes: usize, depth: usize) {
        if anchor != 0 {
            self.anchors.insert(
                anchor,
                Anchored {
                    value: value.clone(),
                    nodes,
                    depth,
                },
            );
        }
    }

    fn remember_collection(&mut self, anchor: usize, value: &Value) {
        if anchor != 0 {
            let (nodes, depth) = measure(value);
            self.remember(anchor, value, nodes, depth);
        }
    }

    /// A finished node goes into its parent (or becomes the document).
    fn complete(&mut self, value: Value, mark: Marker) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => {
                self.done = Some(value);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(value);
                Ok(())
            }
            Some(Frame::Map {
                map, key, merges, ..
            }) => match key.take() {
                Some(PendingKey::Merge) => {
                    merges.push(value);
                    Ok(())
                }
                Some(PendingKey::Key(k)) => {
                    if map.contains_key(&k) {
                        let message = format!("duplicate key {k:?}");
                        return Err(self.error(mark, message));
                    }
                    map.insert(k, value);
                    Ok(())
                }
                None => Err(self.error(mark, "a mapping key must be a scalar")),
            },
        }
    }
}

/// How many nodes a tree has and how deep it goes (for the alias bounds).
fn measure(value: &Value) -> (usize, usize) {
    match value {
        Value::Array(items) => items.iter().fold((1, 1), |(n, d), v| {
            let (vn, vd) = measure(v);
            (n.saturating_add(vn), d.max(vd + 1))
        }),
        Value::Object(map) => map.values().fold((1, 1), |(n, d), v| {
            let (vn, vd) = measure(v);
            (n.saturating_add(vn), d.max(vd + 1))
        }),
        _ => (1, 0),
    }
}

const CORE_TAG: &str = "tag:yaml.org,2002:";

fn check_collection_tag(tag: Option<&Tag>, is_seq: bool) -> Result<(), String> {
    match tag {
        None => Ok(()),
        Some(t) if t.handle == CORE_TAG && t.suffix == if is_seq { "seq" } else { "map" } => Ok(()),
        Some(t) => Err(format!("unsupported tag {}{}", t.handle, t.suffix)),
    }
}

/// The value of one scalar, given how it was written.
fn scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    let Some(tag) = tag else {
        return Ok(if style == TScalarStyle::Plain {
            resolve_plain(text)
        } else {
            Value::String(text.to_owned())
        });
    };
    // `!` alone (non-specific) means "a string" for a scalar.
    if (tag.handle == "!" && tag.suffix.is_empty()) || (tag.handle.is_empty() && tag.suffix == "!")
    {
        return Ok(Value::String(text.to_owned()));
    }
    if tag.handle != CORE_TAG {
        return Err(format!("unsupported tag {}{}", tag.handle, tag.suffix));
    }
    let resolved = resolve_plain(text);
    match tag.suffix.as_str() {
        "str" | "binary" | "timestamp" => Ok(Value::String(text.to_owned())),
        "null" => Ok(Value::Null),
        "bool" => match resolved {
            Value::Bool(_) => Ok(resolved),
            _ => Err(format!("{text:?} is not a !!bool")),
        },
        "int" => match resolved {
            Value::Int(_) | Value::UInt(_) => Ok(resolved),
            _ => Err(format!("{text:?} is not an !!int")),
        },
        "float" => match resolved {
            Value::Float(_) => Ok(resolved),
            Value::Int(i) => Ok(Value::Float(i as f64)),
            Value::UInt(u) => Ok(Value::Float(u as f64)),
            _ => Err(format!("{text:?} is not a !!float")),
        },
        other => Err(format!("unsupported tag !!{other}")),
    }
}

/// A plain scalar resolved as go-yaml v2 (YAML 1.1) resolves it.
pub fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false);
        }
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return Value::String(text.to_owned());
    }
    // go-yaml drops every underscore before trying the number forms.
    let plain: String = text.chars().filter(|&c| c != '_').collect();
    if let Some(i) = parse_int(&plain) {
        return i;
    }
    if is_go_yaml_float(&plain)
        && let Ok(f) = plain.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::String(text.to_owned())
}

/// Go's `ParseInt(s, 0, 64)`, then `ParseUint(s, 0, 64)`: sign, `0x`/`0o`/`0b` prefixes,
/// and a leading `0` meaning octal.
fn parse_int(s: &str) -> Option<Value> {
    let (negative, signed, body) = match s.as_bytes().first()? {
        b'-' => (true, true, &s[1..]),
        b'+' => (false, true, &s[1..]),
        _ => (false, false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u128::from_str_radix(digits, radix).ok()?;
    if negative {
        let v = i128::try_from(magnitude).ok()?.checked_neg()?;
        return i64::try_from(v).ok().map(Value::Int);
    }
    if let Ok(i) = i64::try_from(magnitude) {
        return Some(Value::Int(i));
    }
    // ParseUint takes no sign at all.
    if signed {
        return None;
    }
    u64::try_from(magnitude).ok().map(Value::UInt)
}

/// go-yaml v2's float form: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn is_go_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if int_digits == 0 && i == frac_start {
            return false;
        }
    } else if int_digits == 0 {
        return false;
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        i += 1;
        if i < b.len() && matches!(b[i], b'+' | b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

/// The JSON key a resolved YAML key becomes (as `sigs.k8s.io/yaml` spells it).
fn key_text(key: &Value) -> Result<String, String> {
    match key {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Int(i) => Ok(i.to_string()),
        Value::UInt(u) => Ok(u.to_string()),
        Value::Float(f) => Ok(float_text(*f)),
        Value::Null => Err("a mapping key may not be null".to_owned()),
        Value::Array(_) | Value::Object(_) => Err("a mapping key must be a scalar".to_owned()),
    }
}

// === writing ===

/// Writes documents as one YAML stream, separated by `---`.
pub fn write_documents<'a>(documents: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for (i, doc) in documents.into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        write_document(&mut out, doc);
    }
    out
}

/// One document's YAML text.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_document(&mut out, value);
    out
}

fn write_document(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) if !map.is_empty() => write_map(out, map, 0, false),
        Value::Array(items) if !items.is_empty() => write_seq(out, items, 0, false),
        other => {
            write_scalar(out, other);
            out.push('\n');
        }
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_map(out: &mut String, map: &Map, at: usize, inline_first: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if !(i == 0 && inline_first) {
            indent(out, at);
        }
        let key_text = string_text(key);
        // An implicit key must fit in 1024 characters; longer ones take the explicit form.
        if key_text.len() > 1000 {
            out.push_str("? ");
            out.push_str(&key_text);
            out.push('\n');
            indent(out, at);
        } else {
            out.push_str(&key_text);
        }
        out.push(':');
        match value {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                write_map(out, m, at + 2, false);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                write_seq(out, items, at, false);
            }
            other => {
                out.push(' ');
                write_scalar(out, other);
                out.push('\n');
            }
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], at: usize, inline_first: bool) {
    for (i, item) in items.iter().enumerate() {
        if !(i == 0 && inline_first) {
            indent(out, at);
        }
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => write_map(out, m, at + 2, true),
            Value::Array(inner) if !inner.is_empty() => write_seq(out, inner, at + 2, true),
            other => {
                write_scalar(out, other);
                out.push('\n');
            }
        }
    }
}

fn write_scalar(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::UInt(u) => out.push_str(&u.to_string()),
        Value::Float(f) => out.push_str(&float_text(*f)),
        Value::String(s) => out.push_str(&string_text(s)),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// A float both YAML 1.1 (which needs a `.` and a signed exponent) and 1.2 read as a float.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        return ".nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.to_owned();
    }
    if f == 0.0 || (1e-4..1e15).contains(&f.abs()) {
        let text = f.to_string();
        return if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        };
    }
    let text = format!("{f:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.to_owned()
    } else {
        format!("{mantissa}.0")
    };
    match exponent {
        "0" => mantissa,
        e if e.starts_with('-') => format!("{mantissa}e{e}"),
        e => format!("{mantissa}e+{e}"),
    }
}

/// A string as a plain scalar when no YAML reader could take it for anything else,
/// otherwise double-quoted.
fn string_text(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_owned()
    } else {
        quote(s)
    }
}

/// Conservative: only `[A-Za-z0-9._/:-]`, starting with a letter, `/`, `_`, `-` or `--` before a
/// letter (or a digit when
/// the text cannot be a number, time or date in any YAML version), never a YAML 1.1 boolean
/// or null word in any case.
fn is_plain_safe(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(&first) = b.first() else {
        return false;
    };
    if !b
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-' | b':'))
    {
        return false;
    }
    if s.ends_with(':') {
        return false;
    }
    const WORDS: &[&str] = &[
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
    ];
    if WORDS.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return false;
    }
    if first.is_ascii_alphabetic() || matches!(first, b'/' | b'_') {
        return true;
    }
    // Flags (`-v`, `--proxy-uid`): a `-` before a letter is no sequence entry and no number.
    if first == b'-' {
        let rest = s.trim_start_matches('-');
        return s.len() - rest.len() <= 2 && rest.starts_with(|c: char| c.is_ascii_alphabetic());
    }
    if !first.is_ascii_digit() {
        return false;
    }
    // Starts with a digit: plain only when it has a letter, is no prefixed number
    // (0x, 0b, 0o), no exponent form (1e3, 1.5E10) and no `:` (sexagesimal, times).
    let lower = s.to_ascii_lowercase();
    let has_letter = b.iter().any(|c| c.is_ascii_alphabetic());
    let prefixed = ["0x", "0b", "0o"].iter().any(|p| lower.starts_with(p));
    let exponent_form = lower.split_once('e').is_some_and(|(m, e)| {
        m.bytes()
            .all(|c| c.is_ascii_digit() || c == b'.' || c == b'_')
            && e.bytes().all(|c| c.is_ascii_digit() || c == b'_')
    });
    has_letter && !prefixed && !exponent_form && !s.contains(':')
}

/// Double-quoted YAML: JSON-like escapes, plus the characters YAML 1.1 reads as line breaks
/// or refuses raw.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(c, '\u{feff}' | '\u{fffe}' | '\u{ffff}') =>
            {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Strings a YAML reader could take for something else (YAML 1.1 booleans and numbers in any
/// case, sexagesimals, indicators, document markers, odd white space): the writer must quote
/// each so that it reads back as the same string. The tests of this crate and the e2e check
/// against python's YAML 1.1 reader both write them.
pub const AMBIGUOUS_STRINGS: &[&str] = &[
    "yes",
    "No",
    "on",
    "OFF",
    "y",
    "n",
    "~",
    "null",
    "",
    "0644",
    "0x1F",
    "1_000",
    "1:30",
    "1e3",
    "1.5",
    ".inf",
    "-",
    "- a",
    "a: b",
    "#x",
    "x #y",
    "'q'",
    "\"d\"",
    "true",
    "100m",
    "64Mi",
    "10.0.0.0/8",
    "2001-12-14",
    "<<",
    "=",
    "!tag",
    "&a",
    "*a",
    "@x",
    "`x",
    "|",
    ">",
    "%x",
    "a\nb",
    " lead",
    "trail ",
    "tab\t",
    "\u{85}",
    "\u{2028}",
    "é",
    "ghcr.io/x:1.0",
    "key:",
    "{a}",
    "[a]",
    "?",
    "?x",
    "0o17",
    "09",
    "+1",
    ".5",
    "1e+3",
    "12h",
    "0b1",
    "3d6",
    "--x",
    "-x",
    "---x",
    "-1",
    "-.inf",
    "--",
    "ON",
    "off",
    "Y",
    "1.0e+3",
    ".NaN",
    "True",
    "\u{85}x",
    "--proxy-uid",
    "-v",
    "---",
    "...",
    "12:30:45",
    "190:20:30",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Value {
        let docs = read_documents(text).unwrap();
        assert_eq!(docs.len(), 1, "{text}");
        docs.into_iter().next().unwrap().value
    }

    #[test]
    fn plain_scalars_resolve_as_yaml_1_1() {
        let cases: &[(&str, Value)] = &[
            ("0644", Value::Int(420)),
            ("0x1F", Value::Int(31)),
            ("1_000", Value::Int(1000)),
            ("-12", Value::Int(-12)),
            ("0b101", Value::Int(5)),
            ("yes", Value::Bool(true)),
            ("Off", Value::Bool(false)),
            ("y", Value::Bool(true)),
            ("N", Value::Bool(false)),
            ("~", Value::Null),
            ("", Value::Null),
            ("1.5", Value::Float(1.5)),
            ("yEs", Value::from("yEs")),
            ("1:30", Value::from("1:30")),
            ("100m", Value::from("100m")),
            ("18446744073709551615", Value::UInt(u64::MAX)),
        ];
        for (text, want) in cases {
            assert_eq!(&resolve_plain(text), want, "{text}");
        }
    }

    #[test]
    fn quoted_and_tagged_scalars() {
        let v = one("a: '0644'\nb: !!str yes\nc: !!int \"12\"\nd: \"on\"\n");
        assert_eq!(v.to_json(), r#"{"a":"0644","b":"yes","c":12,"d":"on"}"#);
    }

    #[test]
    fn keys_become_text_and_merges_apply() {
        // `y` is a YAML 1.1 boolean too, so the key `y` is "true", as kubectl reads it.
        let v = one("on: 1\n1: 2\nbase: &b {a: 1, b: 2, y: 0}\nm:\n  <<: *b\n  b: 3\n");
        assert_eq!(
            v.to_json(),
            r#"{"true":1,"1":2,"base":{"a":1,"b":2,"true":0},"m":{"b":3,"a":1,"true":0}}"#
        );
    }

    #[test]
    fn duplicate_keys_and_alias_bombs_are_refused() {
        let err = read_documents("a: 1\na: 2\n").unwrap_err();
        assert!(err.to_string().contains("duplicate key"), "{err}");
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = read_documents(&bomb).unwrap_err();
        assert!(err.to_string().contains("nodes"), "{err}");
    }

    #[test]
    fn byte_order_mark_and_crlf_are_read_as_kubectl_reads_them() {
        let v = one("\u{feff}kind: Pod\r\nspec: {a: 1}\r\n");
        assert_eq!(v.to_json(), r#"{"kind":"Pod","spec":{"a":1}}"#);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let err = read_documents(&text).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
    }

    #[test]
    fn written_strings_read_back_as_strings() {
        let tricky = AMBIGUOUS_STRINGS;
        let mut map = Map::new();
        for (i, s) in tricky.iter().enumerate() {
            map.insert(format!("k{i}"), Value::from(*s));
            map.insert((*s).to_owned(), Value::Int(i as i64));
        }
        let doc = Value::Object(map);
        let text = to_yaml(&doc);
        assert_eq!(one(&text), doc, "{text}");
    }

    #[test]
    fn floats_are_written_with_dot_and_signed_exponent() {
        assert_eq!(float_text(1.0), "1.0");
        assert_eq!(float_text(1.5e20), "1.5e+20");
        assert_eq!(float_text(2.5e-7), "2.5e-7");
        assert_eq!(float_text(0.25), "0.25");
        assert_eq!(float_text(-3.0), "-3.0");
    }

    #[test]
    fn multiple_documents_keep_order() {
        let docs = read_documents("a: 1\n---\n---\nb: [1, {c: d}]\n").unwrap();
        let numbers: Vec<usize> = docs.iter().map(|d| d.number).collect();
        assert_eq!(numbers, vec![1, 2, 3]);
        assert_eq!(docs[1].value, Value::Null);
        let text = write_documents([&docs[0].value, &docs[2].value]);
        assert_eq!(text, "a: 1\n---\nb:\n- 1\n- c: d\n");
    }
}

#[cfg(test)]
mod long_key_tests {
    use super::*;

    #[test]
    fn keys_longer_than_an_implicit_key_read_back() {
        let long = "k".repeat(1500);
        let mut inner = Map::new();
        inner.insert(
            long.clone(),
            Value::Array(vec![Value::from("a"), Value::Int(1)]),
        );
        inner.insert(format!("{long}2"), {
            let mut m = Map::new();
            m.insert("x".into(), Value::from("y"));
            Value::Object(m)
        });
        inner.insert(format!("{long}3"), Value::from("v"));
        let mut outer = Map::new();
        outer.insert("top".into(), Value::Object(inner));
        let doc = Value::Object(outer);
        let text = to_yaml(&doc);
        let back = read_documents(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back[0].value, doc, "{text}");
    }
}
