//! The CA directory's staged rotation: what each stage serves, that each step repeats
//! safely, that a crash part way through any step leaves a state readers understand and a
//! rerun completes, and that a bad new CA changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use palisade_certs::ca::fingerprint;
use palisade_certs::rotation::{
    self, CA_CERT, CA_KEY, Change, ROOT_CERT, ROOT_KEY, ROTATION_FILE, RotationError,
};
use palisade_certs::tls::{Usage, verify_chain};
use palisade_certs::{ActiveCa, CaMaterial, CaState, CertificateAuthority, IssuedLeaf, Stage};

use super::support::{TempDir, id, new_ca, td};

/// A CA directory as `palisade ca init` writes it, and a second CA to rotate to.
struct Bed {
    dir: TempDir,
    new_dir: TempDir,
    old: CaMaterial,
    new: CaMaterial,
}

impl Bed {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(&format!("{label}-ca"));
        let new_dir = TempDir::new(&format!("{label}-new"));
        let (_, old) = new_ca();
        let (_, new) = new_ca();
        old.replace_in(dir.path()).unwrap();
        new.replace_in(new_dir.path()).unwrap();
        Self {
            dir,
            new_dir,
            old,
            new,
        }
    }

    fn state(&self) -> CaState {
        CaState::read_dir(self.dir.path()).unwrap()
    }

    fn active(&self) -> ActiveCa {
        self.state().active(&td()).unwrap()
    }

    fn apply(&self, changes: &[Change]) {
        rotation::apply_to_dir(self.dir.path(), changes).unwrap();
    }

    fn begin_changes(&self) -> Vec<Change> {
        let files = rotation::read_generation(self.new_dir.path()).unwrap();
        self.state()
            .begin(&td(), self.new_dir.path(), &files, 1_000)
            .unwrap()
            .1
    }

    fn begin(&self) {
        self.apply(&self.begin_changes());
    }

    fn advance(&self, to: Stage) {
        let (record, changes) = self.state().advance(to).unwrap();
        assert_eq!(record.stage, to);
        self.apply(&changes);
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn leaf(ca: &CertificateAuthority) -> IssuedLeaf {
    ca.issue(&id("shop", "web"), Duration::from_secs(600))
        .unwrap()
        .0
}

fn issuer_of(material: &CaMaterial) -> String {
    fingerprint(super::support::der(&material.ca_cert_pem).as_ref())
}

fn verifies(leaf: &IssuedLeaf, active: &ActiveCa) -> bool {
    verify_chain(&leaf.leaf, &leaf.chain, active.ca.bundle(), Usage::Server).is_ok()
}

#[test]
fn each_stage_serves_the_issuer_and_roots_it_names() {
    let bed = Bed::new("stages");
    let before = bed.active();
    assert!(before.rotation.is_none());
    assert_eq!(before.ca.issuer_fingerprint(), issuer_of(&bed.old));
    let old_leaf = leaf(&before.ca);

    bed.begin();
    let one = bed.active();
    assert_eq!(one.rotation.as_ref().unwrap().stage, Stage::TrustNewRoot);
    assert_eq!(
        one.ca.issuer_fingerprint(),
        issuer_of(&bed.old),
        "still the old issuer"
    );
    assert_eq!(one.ca.bundle().roots().len(), 2, "both roots");
    let new_ca = CertificateAuthority::from_pem(
        td(),
        &bed.new.ca_cert_pem,
        &bed.new.ca_key_pem,
        Some(&bed.new.cert_chain_pem),
        &bed.new.root_cert_pem,
    )
    .unwrap();
    let new_leaf = leaf(&new_ca);
    assert!(verifies(&old_leaf, &one) && verifies(&new_leaf, &one));

    bed.advance(Stage::IssueFromNew);
    let two = bed.active();
    assert_eq!(
        two.ca.issuer_fingerprint(),
        issuer_of(&bed.new),
        "the new issuer"
    );
    assert_eq!(two.ca.bundle().roots().len(), 2);
    let issued_in_two = leaf(&two.ca);
    assert!(verifies(&old_leaf, &two) && verifies(&issued_in_two, &two));

    bed.advance(Stage::RemoveOldRoot);
    let three = bed.active();
    assert_eq!(three.ca.issuer_fingerprint(), issuer_of(&bed.new));
    assert_eq!(three.ca.bundle().roots().len(), 1, "only the new root");
    assert!(!verifies(&old_leaf, &three), "the old root is gone");
    assert!(verifies(&issued_in_two, &three));
    let record = three.rotation.clone().unwrap();
    assert_eq!(record.retired_roots().len(), 1);

    bed.apply(&bed.state().finish().unwrap());
    let after = bed.active();
    assert!(after.rotation.is_none());
    assert_eq!(after.ca.issuer_fingerprint(), issuer_of(&bed.new));
    assert_eq!(after.ca.bundle().roots().len(), 1);
    assert!(!verifies(&old_leaf, &after) && verifies(&issued_in_two, &after));
    // Only the current generation is left: no record, no next files, and not the retired
    // root's key (which `ca init` had written here).
    assert_eq!(
        bed.names(),
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );
    let read = |name: &str| std::fs::read_to_string(bed.dir.join(name)).unwrap();
    assert_eq!(read(CA_CERT), bed.new.ca_cert_pem);
    assert_eq!(read(ROOT_CERT), bed.new.root_cert_pem);
}

#[test]
fn every_step_repeats_without_change_and_refuses_out_of_order() {
    let bed = Bed::new("repeat");
    bed.begin();
    assert!(
        bed.begin_changes().is_empty(),
        "the same new CA again resumes"
    );

    // Another new CA while one rotation runs.
    let other = TempDir::new("repeat-other");
    new_ca().1.replace_in(other.path()).unwrap();
    let files = rotation::read_generation(other.path()).unwrap();
    let err = bed
        .state()
        .begin(&td(), other.path(), &files, 1)
        .unwrap_err();
    assert!(
        err.to_string().contains("stage 1 (trust-new-root)"),
        "{err}"
    );

    let (_, same) = bed.state().advance(Stage::TrustNewRoot).unwrap();
    assert!(same.is_empty());
    let err = bed.state().advance(Stage::RemoveOldRoot).unwrap_err();
    assert!(err.to_string().contains("cannot move to stage 3"), "{err}");
    assert!(bed.state().finish().is_err(), "finish only at stage 3");

    bed.advance(Stage::IssueFromNew);
    let err = bed.state().abort().unwrap_err();
    assert!(err.to_string().contains("only go forward"), "{err}");
    let err = bed.state().advance(Stage::TrustNewRoot).unwrap_err();
    assert!(err.to_string().contains("cannot move to stage 1"), "{err}");
}

#[test]
fn abort_at_stage_one_restores_the_old_ca() {
    let bed = Bed::new("abort");
    let before = bed.names();
    bed.begin();
    bed.apply(&bed.state().abort().unwrap());
    assert_eq!(bed.names(), before);
    let active = bed.active();
    assert!(active.rotation.is_none());
    assert_eq!(active.ca.issuer_fingerprint(), issuer_of(&bed.old));
    assert_eq!(active.ca.bundle().roots().len(), 1);
}

#[test]
fn a_crash_part_way_through_any_step_is_read_consistently_and_completed_by_a_rerun() {
    // begin: next files first, the record last. Any prefix reads as no rotation (the old
    // CA), and running begin again completes it.
    let bed = Bed::new("crash-begin");
    let changes = bed.begin_changes();
    for cut in 0..changes.len() {
        bed.apply(&changes[..cut]);
        let active = bed.active();
        assert!(active.rotation.is_none(), "prefix {cut}");
        assert_eq!(active.ca.issuer_fingerprint(), issuer_of(&bed.old));
    }
    bed.begin();
    assert_eq!(bed.active().rotation.unwrap().stage, Stage::TrustNewRoot);

    // finish: the current files are replaced while the record still says stage 3, so any
    // prefix serves the new CA with only the new root; a rerun completes it.
    bed.advance(Stage::IssueFromNew);
    bed.advance(Stage::RemoveOldRoot);
    let changes = bed.state().finish().unwrap();
    let record_removed = changes
        .iter()
        .position(|c| matches!(c, Change::Remove { name } if name == ROTATION_FILE))
        .unwrap();
    for cut in 0..=record_removed + 1 {
        bed.apply(&changes[..cut]);
        let active = bed.active();
        assert_eq!(
            active.ca.issuer_fingerprint(),
            issuer_of(&bed.new),
            "prefix {cut}"
        );
        assert_eq!(active.ca.bundle().roots().len(), 1, "prefix {cut}");
        if cut > record_removed {
            // Crashed just after the record went: a steady state on the new CA. Leftover
            // next files are ignored, and overwritten by the next rotation.
            assert!(active.rotation.is_none());
        } else {
            assert_eq!(
                bed.state().finish().unwrap(),
                changes,
                "a rerun does the same"
            );
        }
    }
    bed.apply(&changes);
    assert!(!bed.dir.join(ROOT_KEY).exists());
    assert!(bed.active().rotation.is_none());
}

#[test]
fn an_unusable_new_ca_is_refused_before_anything_changes() {
    let bed = Bed::new("refuse");
    let before: BTreeMap<String, String> = bed.state().files().clone();
    let begin = |files: &BTreeMap<String, String>| {
        bed.state()
            .begin(&td(), bed.new_dir.path(), files, 1)
            .unwrap_err()
    };
    let good = rotation::read_generation(bed.new_dir.path()).unwrap();

    // The key of another CA.
    let mut wrong_key = good.clone();
    wrong_key.insert(CA_KEY.to_owned(), bed.old.ca_key_pem.clone());
    let err = begin(&wrong_key);
    assert!(matches!(err, RotationError::Ca(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&bed.new_dir.join(CA_KEY).display().to_string())
            && text.contains("does not match"),
        "{text}"
    );

    // The issuing certificate not chaining to the new root file.
    let mut foreign_root = good.clone();
    foreign_root.insert(ROOT_CERT.to_owned(), bed.old.root_cert_pem.clone());
    let text = begin(&foreign_root).to_string();
    assert!(text.contains("does not chain"), "{text}");

    // A file missing.
    let mut missing = good.clone();
    missing.remove(CA_CERT);
    let text = begin(&missing).to_string();
    assert!(text.contains(CA_CERT), "{text}");

    // Rotating to the CA already in force.
    let current = rotation::read_generation(bed.dir.path()).unwrap();
    let text = bed
        .state()
        .begin(&td(), bed.dir.path(), &current, 1)
        .unwrap_err()
        .to_string();
    assert!(text.contains("already the issuing CA"), "{text}");

    assert_eq!(bed.state().files(), &before, "nothing was written");
}

#[test]
fn a_root_that_issues_directly_can_be_rotated_to() {
    let bed = Bed::new("root-issuer");
    // Bring-your-own root acting as the issuer: ca-cert.pem is the root itself.
    let root_only = TempDir::new("root-issuer-byo");
    let (_, m) = new_ca();
    let root_key = m.root_key_pem.clone();
    std::fs::write(root_only.join(CA_CERT), &m.root_cert_pem).unwrap();
    std::fs::write(root_only.join(CA_KEY), &root_key).unwrap();
    std::fs::write(root_only.join(ROOT_CERT), &m.root_cert_pem).unwrap();
    let files = rotation::read_generation(root_only.path()).unwrap();
    let (record, changes) = bed
        .state()
        .begin(&td(), root_only.path(), &files, 1)
        .unwrap();
    bed.apply(&changes);
    assert_eq!(
        record.new_issuer,
        fingerprint(super::support::der(&m.root_cert_pem).as_ref())
    );
    bed.advance(Stage::IssueFromNew);
    let two = bed.active();
    assert_eq!(two.ca.issuer_fingerprint(), record.new_issuer);
    let issued = leaf(&two.ca);
    assert!(issued.chain.is_empty(), "a root is never sent in the chain");
    assert!(verifies(&issued, &two));
}

#[test]
fn a_ca_in_cert_manager_layout_can_be_rotated_to() {
    let bed = Bed::new("cert-manager");
    // cert-manager's CA Secret as files: tls.crt = issuing CA then its chain, tls.key, ca.crt.
    let cm = TempDir::new("cert-manager-secret");
    let (_, m) = new_ca();
    cm.write("tls.crt", &format!("{}{}", m.ca_cert_pem, m.root_cert_pem));
    cm.write("tls.key", &m.ca_key_pem);
    cm.write("ca.crt", &m.root_cert_pem);
    let files = rotation::read_generation(cm.path()).unwrap();
    let (record, changes) = bed.state().begin(&td(), cm.path(), &files, 1).unwrap();
    bed.apply(&changes);
    assert_eq!(record.new_issuer, issuer_of(&m));
    bed.advance(Stage::IssueFromNew);
    let two = bed.active();
    let issued = leaf(&two.ca);
    assert!(verifies(&issued, &two));
    assert!(
        !issued
            .chain
            .iter()
            .any(|c| *c == super::support::der(&m.root_cert_pem)),
        "the root from tls.crt is not sent"
    );
}
