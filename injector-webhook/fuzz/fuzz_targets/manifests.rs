//! `palisade inject -f` on arbitrary text: never panics, and whatever it accepts it writes
//! as YAML that reads back to the same documents and is not injected again.

#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use palisade_injector::mutate::Settings;
use palisade_injector::{inject_stream, yaml};

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let settings = Settings::default();
    if let Ok(out) = inject_stream(&text, &settings) {
        let docs = yaml::read_documents(&out.yaml).expect("own output parses");
        let again = yaml::write_documents(docs.iter().map(|d| &d.value));
        assert_eq!(again, out.yaml);
        let twice = inject_stream(&out.yaml, &settings).expect("own output injects");
        assert_eq!(twice.injected, 0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_sample_inputs() {
        for input in [
            &b""[..],
            b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a}]}\n",
            b"a: &a [*a]\n",
            b"- - - -\n",
            b"\xff\xfe",
        ] {
            super::check(input);
        }
    }
}
