//! Path templates learned from the paths seen: a trie of path segments per (caller,
//! destination, port, method). A segment that looks like an identifier (a number, a UUID, a
//! long hex string) is learned as `{*}` at once; a position where more than [`FANOUT`]
//! different names were seen collapses into `{*}`; past [`MAX_DEPTH`] segments the rest is
//! `{**}`. Templates use AuthorizationPolicy's own syntax, so a suggestion can name them.
//!
//! A path AuthorizationPolicy cannot name exactly (a segment holding `*`, `{` or `}`, which
//! a policy would read as a wildcard) is never put in the trie: it is counted apart.

use serde::{Deserialize, Serialize};

/// Different names at one position before it becomes `{*}`.
pub const FANOUT: usize = 16;
/// Segments kept before the rest becomes `{**}`.
pub const MAX_DEPTH: usize = 16;
/// Longest segment kept as a name; a longer one is learned as `{*}`.
pub const MAX_SEGMENT: usize = 64;
/// One segment of any name.
pub const ANY_SEGMENT: &str = "{*}";
/// Any rest of the path.
pub const ANY_REST: &str = "{**}";

/// Counts of the requests that reached one template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// Allowed requests.
    pub allowed: u64,
    /// Denied requests.
    pub denied: u64,
    /// Unix seconds of the first and last report that counted one.
    pub first_seen: i64,
    /// See `first_seen`.
    pub last_seen: i64,
    /// The policy that decided the last of them.
    pub policy: String,
    /// Its rule, -1 when none.
    pub rule: i32,
    /// Whether the last of them was allowed.
    #[serde(default)]
    pub last_allowed: bool,
    /// One path seen (normalised, no query), for replaying the template.
    pub example: String,
}

impl Leaf {
    /// Adds `other`'s counts (and keeps the later decision).
    pub fn merge(&mut self, other: Leaf) {
        self.allowed += other.allowed;
        self.denied += other.denied;
        if self.first_seen == 0 || (other.first_seen != 0 && other.first_seen < self.first_seen) {
            self.first_seen = other.first_seen;
        }
        if other.last_seen >= self.last_seen {
            self.last_seen = other.last_seen;
            self.policy = other.policy;
            self.rule = other.rule;
            self.last_allowed = other.last_allowed;
        }
        if self.example.is_empty() {
            self.example = other.example;
        }
    }
}

/// One position of the trie. Kept small (boxed leaves, children in a sorted vector of at
/// most [`FANOUT`] + 1), since the node cap times a node's size is the table's bound.
#[derive(Debug, Default)]
pub struct Node {
    /// The path ends here.
    end: Option<Box<Leaf>>,
    /// Named next segments, sorted by name.
    named: Vec<(Box<str>, Node)>,
    /// `{*}`: any one segment.
    any: Option<Box<Node>>,
    /// `{**}`: any rest.
    rest: Option<Box<Leaf>>,
}

/// Why a path was not learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLearned {
    /// A segment AuthorizationPolicy would read as a wildcard.
    Unnameable,
    /// The trie would grow past the nodes left in the budget.
    Full,
}

/// Whether `segment` names one thing among many (an id), not a fixed resource.
fn looks_like_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let hexish = b.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-');
    let has_digit = b.iter().any(u8::is_ascii_digit);
    // UUIDs (36 with dashes), hashes and object ids: long hex with digits in it.
    hexish && has_digit && b.len() >= 16
}

/// The segments of a normalised path: `/` has none, `/a/` has `a` and an empty one.
pub fn segments(path: &str) -> impl Iterator<Item = &str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').filter(move |_| !rest.is_empty())
}

/// Whether AuthorizationPolicy can name `path` exactly.
pub fn nameable(path: &str) -> bool {
    !path.contains(['*', '{', '}'])
}

impl Node {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.named.binary_search_by(|(k, _)| (**k).cmp(name))
    }

    fn has(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// The child named `name`, made when missing.
    fn child(&mut self, name: &str) -> &mut Node {
        let i = match self.find(name) {
            Ok(i) => i,
            Err(i) => {
                self.named.insert(i, (name.into(), Node::default()));
                i
            }
        };
        &mut self.named[i].1
    }

    /// Nodes in this subtree, itself included.
    pub fn nodes(&self) -> usize {
        1 + self.named.iter().map(|(_, n)| n.nodes()).sum::<usize>()
            + self.any.as_ref().map_or(0, |n| n.nodes())
    }

    /// Learns `path` with `leaf`'s counts; `budget` is how many nodes it may add, and is
    /// lowered by what it added (or raised by what a collapse freed).
    pub fn learn(&mut self, path: &str, leaf: Leaf, budget: &mut isize) -> Result<(), NotLearned> {
        if !nameable(path) {
            return Err(NotLearned::Unnameable);
        }
        let segs: Vec<&str> = segments(path).collect();
        self.insert(&segs, leaf, budget, 0)
    }

    fn insert(
        &mut self,
        segs: &[&str],
        leaf: Leaf,
        budget: &mut isize,
        depth: usize,
    ) -> Result<(), NotLearned> {
        let Some((first, tail)) = segs.split_first() else {
            merge_into(&mut self.end, leaf);
            return Ok(());
        };
        if depth == MAX_DEPTH {
            merge_into(&mut self.rest, leaf);
            return Ok(());
        }
        // An empty segment (`/a/`) is a name of its own: `{*}` does not match it.
        let wild = !first.is_empty()
            && (looks_like_id(first)
                || first.len() > MAX_SEGMENT
                || self.any.is_some() && !self.has(first));
        if !wild && !self.has(first) {
            let names = self.named.iter().filter(|(k, _)| !k.is_empty()).count();
            if !first.is_empty() && names >= FANOUT {
                self.collapse(budget);
                return self.insert(segs, leaf, budget, depth);
            }
            if *budget <= 0 {
                return Err(NotLearned::Full);
            }
            *budget -= 1;
            self.child(first);
        }
        let next = if wild {
            if self.any.is_none() {
                if *budget <= 0 {
                    return Err(NotLearned::Full);
                }
                *budget -= 1;
                self.any = Some(Box::default());
            }
            match self.any.as_deref_mut() {
                Some(node) => node,
                None => return Err(NotLearned::Full),
            }
        } else {
            self.child(first)
        };
        next.insert(tail, leaf, budget, depth + 1)
    }

    /// Every named next segment but the empty one merges into `{*}`.
    fn collapse(&mut self, budget: &mut isize) {
        let before = self.nodes();
        let named = std::mem::take(&mut self.named);
        let mut any = self.any.take().map_or_else(Node::default, |b| *b);
        for (name, node) in named {
            if name.is_empty() {
                self.named.push((name, node));
            } else {
                any.absorb(node);
            }
        }
        self.any = Some(Box::new(any));
        *budget += isize::try_from(before).unwrap_or(isize::MAX)
            - isize::try_from(self.nodes()).unwrap_or(isize::MAX);
    }

    /// Merges `other` (a subtree at the same position) into this one.
    fn absorb(&mut self, other: Node) {
        if let Some(l) = other.end {
            merge_into(&mut self.end, *l);
        }
        if let Some(l) = other.rest {
            merge_into(&mut self.rest, *l);
        }
        for (name, node) in other.named {
            self.child(&name).absorb(node);
        }
        if let Some(node) = other.any {
            self.any.get_or_insert_with(Box::default).absorb(*node);
        }
    }

    /// Every template below with its counts, as `(template, leaf)`.
    pub fn templates(&self) -> Vec<(String, &Leaf)> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut out);
        out
    }

    fn walk<'a>(&'a self, prefix: &mut Vec<&'a str>, out: &mut Vec<(String, &'a Leaf)>) {
        let path = |prefix: &[&str], last: Option<&str>| {
            let mut p = String::from("/");
            let mut parts: Vec<&str> = prefix.to_vec();
            parts.extend(last);
            p.push_str(&parts.join("/"));
            p
        };
        if let Some(l) = &self.end {
            out.push((path(prefix, None), l));
        }
        if let Some(l) = &self.rest {
            out.push((path(prefix, Some(ANY_REST)), l));
        }
        for (name, node) in &self.named {
            prefix.push(name);
            node.walk(prefix, out);
            prefix.pop();
        }
        if let Some(node) = &self.any {
            prefix.push(ANY_SEGMENT);
            node.walk(prefix, out);
            prefix.pop();
        }
    }

    /// Re-learns a template this trie produced (`{*}` and `{**}` read as such), e.g. from
    /// the saved table.
    pub fn relearn(
        &mut self,
        template: &str,
        leaf: Leaf,
        budget: &mut isize,
    ) -> Result<(), NotLearned> {
        let segs: Vec<&str> = segments(template).collect();
        let mut node = self;
        for (i, seg) in segs.iter().enumerate() {
            if *seg == ANY_REST && i + 1 == segs.len() {
                merge_into(&mut node.rest, leaf);
                return Ok(());
            }
            if *budget <= 0 {
                return Err(NotLearned::Full);
            }
            node = if *seg == ANY_SEGMENT {
                if node.any.is_none() {
                    *budget -= 1;
                }
                node.any.get_or_insert_with(Box::default)
            } else {
                if !nameable(seg) {
                    return Err(NotLearned::Unnameable);
                }
                if !node.has(seg) {
                    *budget -= 1;
                }
                node.child(seg)
            };
        }
        merge_into(&mut node.end, leaf);
        Ok(())
    }
}

fn merge_into(slot: &mut Option<Box<Leaf>>, leaf: Leaf) {
    match slot {
        Some(l) => l.merge(leaf),
        None => *slot = Some(Box::new(leaf)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(n: u64, example: &str) -> Leaf {
        Leaf {
            allowed: n,
            first_seen: 1,
            last_seen: 1,
            policy: "default-allow".into(),
            rule: -1,
            example: example.into(),
            ..Leaf::default()
        }
    }

    fn learned(paths: &[&str]) -> Vec<(String, u64)> {
        let mut root = Node::default();
        let mut budget = 10_000;
        for p in paths {
            root.learn(p, leaf(1, p), &mut budget).unwrap();
        }
        let mut t: Vec<(String, u64)> = root
            .templates()
            .into_iter()
            .map(|(t, l)| (t, l.allowed))
            .collect();
        t.sort();
        t
    }

    #[test]
    fn ids_become_one_segment_wildcards_and_names_stay() {
        let t = learned(&[
            "/orders/1",
            "/orders/2",
            "/orders/3/items",
            "/orders",
            "/orders/",
            "/users/0b8e7c3a-1f2d-4c5e-9a7b-6d5e4c3b2a19",
            "/",
            "/search",
        ]);
        let names: Vec<&str> = t.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "/",
                "/orders",
                "/orders/",
                "/orders/{*}",
                "/orders/{*}/items",
                "/search",
                "/users/{*}"
            ]
        );
        assert_eq!(t[3].1, 2);
    }

    #[test]
    fn a_wide_position_collapses_into_a_wildcard_keeping_counts() {
        let mut paths: Vec<String> = (0..(FANOUT + 4))
            .map(|i| format!("/files/name{}/meta", (b'a' + i as u8) as char))
            .collect();
        paths.push("/files/".to_owned());
        paths.push("/files/special/raw".to_owned());
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let t = learned(&refs);
        assert_eq!(
            t,
            [
                ("/files/".to_owned(), 1),
                ("/files/{*}/meta".to_owned(), (FANOUT + 4) as u64),
                ("/files/{*}/raw".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn deep_paths_end_in_any_rest_and_unnameable_ones_are_refused() {
        let deep = format!("/{}", vec!["d"; MAX_DEPTH + 5].join("/"));
        let mut root = Node::default();
        let mut budget = 1000;
        root.learn(&deep, leaf(1, &deep), &mut budget).unwrap();
        let t = root.templates();
        assert!(t[0].0.ends_with("/{**}"), "{t:?}");
        assert_eq!(t[0].0.matches('/').count(), MAX_DEPTH + 1);
        for bad in ["/admin*", "/x/{**}", "/a/{*}", "/b}"] {
            assert_eq!(
                root.learn(bad, leaf(1, bad), &mut budget),
                Err(NotLearned::Unnameable),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_budget_bounds_the_trie_and_templates_relearn_to_the_same_trie() {
        let mut root = Node::default();
        let mut budget = 5;
        assert!(root.learn("/a/b/c/d/e", leaf(1, ""), &mut budget).is_ok());
        assert_eq!(budget, 0);
        assert_eq!(
            root.learn("/z", leaf(1, ""), &mut budget),
            Err(NotLearned::Full)
        );
        assert!(
            root.learn("/a/b", leaf(1, ""), &mut budget).is_ok(),
            "no new node"
        );
        let mut other = Node::default();
        let mut budget = 100;
        for (t, l) in learned_node(&["/o/1", "/o/2/x", "/p"]).templates() {
            other.relearn(&t, l.clone(), &mut budget).unwrap();
        }
        let again: Vec<String> = other.templates().into_iter().map(|(t, _)| t).collect();
        assert_eq!(again, ["/o/{*}", "/o/{*}/x", "/p"]);
    }

    fn learned_node(paths: &[&str]) -> Node {
        let mut root = Node::default();
        let mut budget = 1000;
        for p in paths {
            root.learn(p, leaf(1, p), &mut budget).unwrap();
        }
        root
    }
}
