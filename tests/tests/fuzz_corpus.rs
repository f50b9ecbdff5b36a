//! Replays every committed fuzz input (the minimised corpus in
//! `fuzz/corpus/NAME/` and the crashes found, in `fuzz/regressions/NAME/`)
//! through the fuzz targets' own functions, without a fuzzer: each must
//! return (an error is fine) without panicking.

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .filter_map(|folder| std::fs::read_dir(root.join(folder).join(target)).ok())
        .flatten()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_fuzz_input_is_handled_without_a_panic() {
    for (target, run) in harness::TARGETS {
        let files = inputs(target);
        assert!(files.len() >= 2, "fuzz/corpus/{target}/ holds {} inputs", files.len());
        for path in files {
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panic!("{target}: {} panics", path.display());
            }
        }
    }
}

#[test]
fn the_seeds_reach_past_the_format_checks() {
    // A corpus of garbage only tests the first checks: valid files must be in it.
    let files = inputs("safetensors");
    let opened = files.iter().filter(|p| burn_stylecode::weights::TensorFile::open(p).is_ok()).count();
    assert!(opened >= 2, "{opened} of {} safetensors inputs open", files.len());
    let pngs = inputs("png_text");
    let with_text = pngs.iter().filter(|p| burn_stylecode::read_png_text(p).is_ok_and(|t| !t.is_empty())).count();
    assert!(with_text >= 1, "no PNG with text chunks in the corpus");
}
