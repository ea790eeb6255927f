//! RFC 6902 JSON Patch: the few operations injection needs (`add`, `replace`), written as the
//! webhook answers them and applied here for `palisade inject -f`.
//!
//! The webhook's patch and `inject -f`'s output come from the same operations, so what the API
//! server would store and what `inject -f` prints cannot drift apart.

use crate::value::{Map, Value};

/// A JSON Pointer (RFC 6901), kept as its unescaped reference tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// The pointer to the whole document.
    pub fn root() -> Self {
        Pointer(Vec::new())
    }

    /// This pointer with one more reference token.
    pub fn child(&self, token: impl Into<String>) -> Self {
        let mut tokens = self.0.clone();
        tokens.push(token.into());
        Pointer(tokens)
    }

    /// The pointer text, with `~` written `~0` and `/` written `~1`.
    pub fn text(&self) -> String {
        self.0
            .iter()
            .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
            .collect()
    }
}

/// One patch operation.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchOp {
    /// Adds a member, inserts into an array at an index (`-`: at the end), or sets a member
    /// that exists.
    Add {
        /// Where.
        path: Pointer,
        /// What.
        value: Value,
    },
    /// Replaces a value that exists.
    Replace {
        /// Where.
        path: Pointer,
        /// The new value.
        value: Value,
    },
}

/// Why a patch does not apply (a bug in the injector if it ever happens).
#[derive(Debug, thiserror::Error)]
#[error("patch {op} {path}: {problem}")]
pub struct PatchError {
    op: &'static str,
    path: String,
    problem: &'static str,
}

/// The patch as the JSON array RFC 6902 defines.
pub fn to_value(ops: &[PatchOp]) -> Value {
    Value::Array(
        ops.iter()
            .map(|op| {
                let (name, path, value) = match op {
                    PatchOp::Add { path, value } => ("add", path, value),
                    PatchOp::Replace { path, value } => ("replace", path, value),
                };
                let mut m = Map::new();
                m.insert("op".into(), name.into());
                m.insert("path".into(), path.text().into());
                m.insert("value".into(), value.clone());
                Value::Object(m)
            })
            .collect(),
    )
}

/// Applies `ops` in order to `doc`.
pub fn apply(doc: &mut Value, ops: &[PatchOp]) -> Result<(), PatchError> {
    for op in ops {
        let (name, path, value, insert) = match op {
            PatchOp::Add { path, value } => ("add", path, value, true),
            PatchOp::Replace { path, value } => ("replace", path, value, false),
        };
        let fail = |problem| PatchError {
            op: name,
            path: path.text(),
            problem,
        };
        let Some((last, parents)) = path.0.split_last() else {
            *doc = value.clone();
            continue;
        };
        let mut target = &mut *doc;
        for token in parents {
            target = match target {
                Value::Object(m) => m.get_mut(token).ok_or_else(|| fail("no such member"))?,
                Value::Array(a) => {
                    let i = token.parse::<usize>().map_err(|_| fail("not an index"))?;
                    a.get_mut(i).ok_or_else(|| fail("index out of range"))?
                }
                _ => return Err(fail("parent is not a container")),
            };
        }
        match target {
            Value::Object(m) => {
                if !insert && !m.contains_key(last) {
                    return Err(fail("no such member"));
                }
                // `add` on an existing member replaces it in place (key order kept).
                m.insert(last.clone(), value.clone());
            }
            Value::Array(a) => {
                let i = if insert && last == "-" {
                    a.len()
                } else {
                    last.parse::<usize>().map_err(|_| fail("not an index"))?
                };
                if insert {
                    if i > a.len() {
                        return Err(fail("index out of range"));
                    }
                    a.insert(i, value.clone());
                } else {
                    let slot = a.get_mut(i).ok_or_else(|| fail("index out of range"))?;
                    *slot = value.clone();
                }
            }
            _ => return Err(fail("parent is not a container")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::from_json;

    #[test]
    fn pointer_escapes_tilde_and_slash() {
        let p = Pointer::root()
            .child("metadata")
            .child("annotations")
            .child("palisade.dev/status~x");
        assert_eq!(p.text(), "/metadata/annotations/palisade.dev~1status~0x");
    }

    #[test]
    fn add_inserts_and_appends() {
        let mut doc = from_json(br#"{"a":[1,3],"m":{}}"#).unwrap();
        let ops = [
            PatchOp::Add {
                path: Pointer::root().child("a").child("1"),
                value: Value::Int(2),
            },
            PatchOp::Add {
                path: Pointer::root().child("a").child("-"),
                value: Value::Int(4),
            },
            PatchOp::Add {
                path: Pointer::root().child("m").child("k/x"),
                value: "v".into(),
            },
            PatchOp::Replace {
                path: Pointer::root().child("a").child("0"),
                value: Value::Int(0),
            },
        ];
        apply(&mut doc, &ops).unwrap();
        assert_eq!(doc.to_json(), r#"{"a":[0,2,3,4],"m":{"k/x":"v"}}"#);
        let replace_missing = [PatchOp::Replace {
            path: Pointer::root().child("zz"),
            value: Value::Null,
        }];
        assert!(apply(&mut doc, &replace_missing).is_err());
    }
}
