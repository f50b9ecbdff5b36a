//! The CLIP tokenizer against transformers' `CLIPTokenizer`, on CLIP's real
//! vocabulary and on the tiny one of the test weights.
//!
//! transformers 5 has a single CLIP tokenizer (`CLIPTokenizerFast` is the
//! same class), so there is one set of expected ids. `open_clip_differs_on`
//! in the reference lists the prompts where the original CLIP tokenizer
//! (ftfy, html.unescape) gives other ids; diffusers uses transformers'.

use burn_stylecode::sd::tokenizer::{ClipTokenizer, ClipTokenizerConfig, CLIP_MAX_LENGTH};
use burn_stylecode::Error;
use burn_stylecode_tests::*;
use std::io::Read;
use std::path::Path;

/// GPT-2's byte → printable character table, in CLIP's vocabulary order.
fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut symbols: Vec<char> = (0..256).filter(|&b| printable(b)).map(|b| char::from_u32(b).unwrap()).collect();
    // The unprintable bytes get the code points from 256 on, in order.
    let unprintable = (0..256).filter(|&b| !printable(b)).count() as u32;
    symbols.extend((256..256 + unprintable).map(|c| char::from_u32(c).unwrap()));
    symbols
}

/// CLIP's `SimpleTokenizer` construction from `bpe_simple_vocab_16e6.txt.gz`:
/// the header line, then 49152-256-2 merges; vocabulary = the 256 byte
/// symbols, the same with `</w>`, each merge joined, then BOS and EOS.
fn write_real_vocabulary(dir: &Path) {
    let gz = std::fs::File::open(fixtures().join("tokenizer/bpe_simple_vocab_16e6.txt.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    let merges = &lines[1..49152 - 256 - 2 + 1];

    let symbols: Vec<String> = byte_symbols().into_iter().map(String::from).collect();
    let mut vocab: Vec<String> = symbols.clone();
    vocab.extend(symbols.iter().map(|s| format!("{s}</w>")));
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.extend(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    assert_eq!(vocab.len(), 49408);
    let map: serde_json::Map<String, serde_json::Value> =
        vocab.into_iter().enumerate().map(|(i, token)| (token, serde_json::Value::from(i))).collect();
    std::fs::write(dir.join("vocab.json"), serde_json::Value::Object(map).to_string()).unwrap();
    std::fs::write(dir.join("merges.txt"), format!("#version: 0.2\n{}\n", merges.join("\n"))).unwrap();
}

fn expected(set: &str) -> Vec<(String, Vec<u32>)> {
    let reference = reference_json("clip_tokenizer.json");
    let prompts = reference[set]["prompts"].as_array().unwrap();
    let ids = reference[set]["ids"].as_array().unwrap();
    assert_eq!(prompts.len(), ids.len());
    prompts
        .iter()
        .zip(ids)
        .map(|(p, ids)| {
            let ids = ids.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            (p.as_str().unwrap().to_string(), ids)
        })
        .collect()
}

fn assert_ids(tokenizer: &ClipTokenizer, cases: &[(String, Vec<u32>)]) {
    for (prompt, ids) in cases {
        assert_eq!(&tokenizer.encode(prompt).unwrap(), ids, "prompt {prompt:?}");
    }
}

fn tiny_dir() -> std::path::PathBuf {
    weights().sd15_dir().join("tokenizer")
}

#[test]
fn real_vocabulary_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    write_real_vocabulary(dir.path());
    let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()), (49406, 49407, 49407));
    assert_eq!((tokenizer.vocab_size(), tokenizer.max_length()), (49408, 77));
    let cases = expected("full");
    assert!(cases.len() >= 15);
    assert_ids(&tokenizer, &cases);
}

#[test]
fn tiny_vocabulary_matches_transformers() {
    let tokenizer = ClipTokenizer::from_dir(tiny_dir()).unwrap();
    let vocab_size = reference_json("clip_tokenizer.json")["tiny"]["vocab_size"].as_u64().unwrap() as u32;
    assert_eq!(
        (tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()),
        (vocab_size - 2, vocab_size - 1, vocab_size - 1)
    );
    assert_ids(&tokenizer, &expected("tiny"));
}

#[test]
fn tokenizer_json_folder_gives_the_same_ids() {
    // The folder as transformers 5 saves it: tokenizer.json beside the configs.
    let dir = tempfile::tempdir().unwrap();
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(tiny_dir().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::copy(fixtures().join("reference/clip_tiny_tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_ids(&tokenizer, &expected("tiny"));
}

#[test]
fn every_sequence_is_bos_tokens_eos_padding() {
    let tokenizer = ClipTokenizer::from_dir(tiny_dir()).unwrap();
    let (bos, eos) = (tokenizer.bos_id(), tokenizer.eos_id());
    let empty = tokenizer.encode("").unwrap();
    assert_eq!(empty[..2], [bos, eos]);
    assert!(empty.iter().skip(2).all(|&id| id == tokenizer.pad_id()));

    let long = "a lighthouse on a rocky cliff at sunset, ".repeat(20);
    let ids = tokenizer.encode(&long).unwrap();
    assert_eq!(ids.len(), CLIP_MAX_LENGTH);
    assert_eq!((ids[0], ids[CLIP_MAX_LENGTH - 1]), (bos, eos), "truncation keeps BOS first and EOS last");
    assert!(ids[1..CLIP_MAX_LENGTH - 1].iter().all(|&id| id != eos));

    let prompts = ["a cat", "", "two\tdogs"];
    let batch = tokenizer.encode_batch(&prompts).unwrap();
    let one_by_one: Vec<Vec<u32>> = prompts.iter().map(|p| tokenizer.encode(p).unwrap()).collect();
    assert_eq!(batch, one_by_one);
}

#[test]
fn config_files_set_length_and_pad_token() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt"] {
        std::fs::copy(tiny_dir().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"model_max_length": 16, "pad_token": "!"}"#).unwrap();
    let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
    let ids = tokenizer.encode("a cat").unwrap();
    assert_eq!(ids.len(), 16);
    assert_eq!(tokenizer.pad_id(), 0, "`!` is the first byte symbol");
    assert_eq!(*ids.last().unwrap(), 0);

    // No configs at all: CLIP's special tokens, 77 ids.
    let bare = ClipTokenizerConfig::from_dir(Path::new("/nonexistent")).unwrap();
    assert_eq!(bare, ClipTokenizerConfig::default());
    assert_eq!(bare.model_max_length, 77);
}

fn broken_copy(file: &str, contents: &str) -> (tempfile::TempDir, Error) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt"] {
        std::fs::copy(tiny_dir().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join(file), contents).unwrap();
    let error = ClipTokenizer::from_dir(dir.path()).unwrap_err();
    (dir, error)
}

#[test]
fn bad_files_are_errors_naming_them() {
    let (_dir, error) = broken_copy("merges.txt", "#version: 0.2\nt h\nthis is bad\n");
    let message = error.to_string();
    assert!(message.contains("merges.txt") && message.contains("line 3"), "{message}");

    let (_dir, error) = broken_copy("vocab.json", r#"{"a": 0, "b": 1}"#);
    assert!(error.to_string().contains("merges.txt"), "a merge of unknown tokens: {error}");

    let (_dir, error) = broken_copy("vocab.json", "[1, 2]");
    assert!(matches!(&error, Error::Json { path, .. } if path.ends_with("vocab.json")), "{error}");

    let (_dir, error) = broken_copy("tokenizer_config.json", r#"{"bos_token": 5}"#);
    assert!(error.to_string().contains("tokenizer_config.json") && error.to_string().contains("bos_token"), "{error}");

    let (_dir, error) = broken_copy("tokenizer_config.json", r#"{"pad_token": "<|pad|>"}"#);
    assert!(error.to_string().contains("<|pad|>") && error.to_string().contains("vocab.json"), "{error}");

    let missing = ClipTokenizer::from_dir("/nonexistent/tokenizer").unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/tokenizer/vocab.json"), "{missing}");
}
