use super::*;

fn request(source: &str, method: &str, path: &str, allowed: bool) -> ObservedRequest {
    ObservedRequest {
        source: source.to_owned(),
        port: 8080,
        method: method.to_owned(),
        path: path.to_owned(),
        allowed: u64::from(allowed),
        denied: u64::from(!allowed),
        policy: "default-allow".to_owned(),
        rule: -1,
        last_allowed: allowed,
    }
}

fn resolve(id: &str) -> Option<String> {
    id.rsplit_once("/sa/").map(|(_, sa)| format!("shop/{sa}"))
}

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";

/// A table holding one report of `rows` from search's sidecar.
fn search_saw(rows: Vec<ObservedRequest>) -> ObservedTable {
    let t = ObservedTable::default();
    t.ingest("shop/search", rows, 0, &resolve);
    t
}

#[test]
fn reports_become_rows_with_templates_callers_and_counts() {
    let t = ObservedTable::default();
    t.ingest(
        "shop/search",
        vec![
            request(CLIENT, "GET", "/items/1", true),
            request(CLIENT, "GET", "/items/2", true),
            request(CLIENT, "GET", "/search", true),
            request(CLIENT, "DELETE", "/items/1", false),
            request("", "", "", false),
        ],
        3,
        &resolve,
    );
    let o = t.snapshot(0);
    let rows: Vec<(String, &str, &str, u64, u64)> = o
        .rows
        .iter()
        .map(|r| {
            (
                r.key.source_workload.clone(),
                r.key.method.as_str(),
                r.path.as_str(),
                r.leaf.allowed,
                r.leaf.denied,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (String::new(), "", "", 0, 1),
            ("shop/client".to_owned(), "DELETE", "/items/{*}", 0, 1),
            ("shop/client".to_owned(), "GET", "/items/{*}", 2, 0),
            ("shop/client".to_owned(), "GET", "/search", 1, 0),
        ]
    );
    assert_eq!(o.folded, 3);
    assert!(o.rows.iter().all(|r| r.key.destination == "shop/search"));
    assert_eq!(o.rows[2].leaf.example, "/items/1");
}

#[test]
fn a_path_a_policy_would_read_as_a_wildcard_is_counted_apart() {
    let t = search_saw(vec![
        request(CLIENT, "GET", "/admin*", true),
        request(CLIENT, "GET", "/x/{**}", true),
    ]);
    let o = t.snapshot(0);
    assert!(o.rows.is_empty(), "{o:?}");
    assert_eq!(o.unnameable, 2);
}

/// Issue 17 item 3: 100,000 distinct paths and 10,000 distinct callers keep the table
/// within its caps, and what did not fit is counted (its heap: `tests/observed_memory.rs`).
#[test]
fn a_flood_of_paths_and_callers_stays_within_the_bound() {
    let t = ObservedTable::default();
    let mut sent = 0u64;
    // 100,000 distinct paths from one caller, in reports of 1,000.
    for batch in 0..100 {
        let rows = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                request(
                    CLIENT,
                    "GET",
                    &format!("/p{}/q{}/r{n}", n % 97, n % 89),
                    true,
                )
            })
            .collect();
        sent += 1000;
        t.ingest("shop/search", rows, 0, &resolve);
    }
    // 10,000 distinct callers, each with its own long path.
    for batch in 0..10 {
        let rows = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                let caller = format!(
                    "spiffe://cluster.local/ns/shop/sa/caller-{n}-{}",
                    "x".repeat(200)
                );
                request(&caller, "GET", &format!("/c/{}/{n}", "y".repeat(200)), true)
            })
            .collect();
        sent += 1000;
        t.ingest("shop/search", rows, 0, &resolve);
    }
    let (groups, nodes) = t.size();
    let o = t.snapshot(0);
    let kept: u64 = o.rows.iter().map(|r| r.leaf.allowed).sum();
    println!(
        "observed flood: {groups} groups, {nodes} nodes, {} rows, {kept} requests kept in rows, {} folded",
        o.rows.len(),
        o.folded
    );
    assert!(
        groups <= MAX_GROUPS && nodes <= MAX_NODES,
        "{groups} {nodes}"
    );
    assert_eq!(
        kept + o.folded + o.unnameable,
        sent,
        "every request counted once"
    );
    assert!(
        o.folded > 0,
        "10,000 callers do not fit in {MAX_GROUPS} groups"
    );
    // The paths of one caller collapsed into templates rather than 100,000 rows.
    let search_rows = o.rows.iter().filter(|r| r.key.source == CLIENT).count();
    assert!(search_rows < 200, "{search_rows}");
}

#[test]
fn rows_not_seen_within_the_retention_are_pruned_and_the_rest_kept() {
    let t = search_saw(vec![
        request(CLIENT, "GET", "/items/1", true),
        request(CLIENT, "GET", "/search", true),
    ]);
    let now = now_seconds();
    t.prune_before(now - 60);
    assert_eq!(t.snapshot(0).rows.len(), 2, "nothing is old yet");
    t.prune_before(now + 60);
    assert!(
        t.snapshot(0).rows.is_empty(),
        "everything is older than the cutoff"
    );
    assert_eq!(t.size(), (0, 0));
}

#[test]
fn the_table_survives_a_save_and_load_and_a_bad_file_is_named() {
    let t = ObservedTable::default();
    t.ingest(
        "shop/search",
        vec![
            request(CLIENT, "GET", "/items/1", true),
            request(CLIENT, "GET", "/search", true),
        ],
        2,
        &resolve,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("observed.json");
    t.save(&file).unwrap();
    let again = ObservedTable::load(&file).unwrap();
    assert_eq!(again.snapshot(0), t.snapshot(0));
    assert_eq!(again.size(), t.size());
    assert_eq!(
        ObservedTable::load(&dir.path().join("missing.json"))
            .unwrap()
            .snapshot(0),
        Observations::default()
    );
    std::fs::write(&file, "{not json").unwrap();
    let err = ObservedTable::load(&file).unwrap_err().to_string();
    assert!(
        err.contains("observed.json") && err.contains("not a saved observation table"),
        "{err}"
    );
}

const SHOP: &[(&str, &str)] = &[
    (
        "mesh.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: palisade-system}\nspec: {trustDomain: cluster.local, defaultAuthorization: deny}\n",
    ),
    (
        "workloads.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata: {name: client, namespace: shop, labels: {app: client}}\nspec: {serviceAccount: client, address: 10.0.0.1}\n---\napiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata: {name: search, namespace: shop, labels: {app: search, tier: \"true\", version: \"1.10\"}}\nspec: {serviceAccount: search, address: 10.0.0.2, ports: [{name: http, port: 8080}, {name: db, port: 5432, appProtocol: tcp}]}\n---\napiVersion: palisade.dev/v1alpha1\nkind: Workload\nmetadata: {name: bare, namespace: shop}\nspec: {serviceAccount: bare, address: 10.0.0.3, ports: [{name: http, port: 8080}]}\n",
    ),
];

/// What an outsider can put in a row (a path with quotes, `#` and YAML syntax; a caller of
/// another mesh; plaintext; a destination without labels) never changes the meaning of the
/// suggested YAML: it loads with the mesh's own loader, each path reads back exactly, and
/// what cannot be expressed is left out and said.
#[test]
fn suggestions_quote_what_callers_chose_and_load_with_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in SHOP {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let snapshot = crate::load_dir(dir.path()).unwrap();
    let t = ObservedTable::default();
    // YAML's own syntax ('&' anchors, '!' tags, ': ', quotes) in pchars a path may hold.
    let tricky = "/a'b/c:d/&x/!y/@z/(p)+,;=$";
    let unnameable = "/a\"b/#c: d/- [x]";
    t.ingest(
        "shop/search",
        vec![
            request(CLIENT, "GET", tricky, true),
            request(CLIENT, "GET", "/ok", true),
            request(CLIENT, "GET", unnameable, true),
            request(CLIENT, "GET", "/denied", false),
            request("spiffe://other.mesh/ns/x/sa/y", "GET", "/ok", true),
            request("", "GET", "/ok", true),
            ObservedRequest {
                port: 5432,
                ..request(CLIENT, "", "", true)
            },
        ],
        0,
        &resolve,
    );
    t.ingest(
        "shop/bare",
        vec![request(CLIENT, "GET", "/x", true)],
        0,
        &resolve,
    );
    let s = suggest::suggest(&snapshot, &t.snapshot(0));
    std::fs::write(dir.path().join("suggested.yaml"), &s.yaml).unwrap();
    let loaded = crate::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}\n{}", s.yaml));
    let search = loaded.workload("shop", "search").unwrap();
    let policies: Vec<_> = loaded.authorization_policies_for(search).collect();
    assert_eq!(policies.len(), 1, "{}", s.yaml);
    let yaml: Vec<serde_yaml_ng::Value> = s
        .yaml
        .split("\n---\n")
        .filter_map(|d| serde_yaml_ng::from_str(d).ok())
        .filter(|v: &serde_yaml_ng::Value| !v.is_null())
        .collect();
    let ap = yaml
        .iter()
        .find(|d| d["kind"] == "AuthorizationPolicy")
        .unwrap();
    let rules = ap["spec"]["rules"].as_sequence().unwrap();
    assert_eq!(
        rules.len(),
        2,
        "client and the other mesh's caller: {}",
        s.yaml
    );
    let paths: Vec<&str> = rules
        .iter()
        .flat_map(|r| r["to"].as_sequence().unwrap())
        .filter_map(|t| t["operation"]["paths"].as_sequence())
        .flatten()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(paths.contains(&tricky), "{paths:?}");
    assert!(
        !paths.contains(&"/denied"),
        "only allowed traffic is suggested"
    );
    let np = yaml.iter().find(|d| d["kind"] == "NetworkPolicy").unwrap();
    // Values YAML would read as a boolean and a number unquoted read back as strings.
    let labels = &np["spec"]["podSelector"]["matchLabels"];
    assert_eq!(labels["tier"], "true", "labels read back exactly");
    assert_eq!(labels["version"], "1.10", "labels read back exactly");
    assert_eq!(np["spec"]["ingress"].as_sequence().unwrap().len(), 1);
    let left_out = s.left_out.join("\n");
    for said in [
        "without a verified identity",
        "not a workload of the mesh",
        "shop/bare: has no labels",
        "no policy can name this path",
    ] {
        assert!(left_out.contains(said), "{said}: {left_out}");
    }
}
