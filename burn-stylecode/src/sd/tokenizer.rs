//! The CLIP tokenizer of Stable Diffusion 1.5, as transformers' `CLIPTokenizer`.
//!
//! transformers 5 has only the `tokenizers`-backed CLIP tokenizer (the old
//! Python one, with `ftfy` and `html.unescape`, is gone), so this builds the
//! same `tokenizers` pipeline from the folder's files:
//!
//! - normalise: NFC, every run of whitespace → one space, lower-case;
//! - pre-tokenise: CLIP's regex (`'s|'t|…|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`,
//!   whitespace dropped), then GPT-2's byte-to-character table;
//! - byte-level BPE with `</w>` marking the end of each word;
//! - `<|startoftext|>` … `<|endoftext|>` around the ids, truncated so that
//!   the EOS stays last, padded with the pad token (SD1.5: `<|endoftext|>`)
//!   to `model_max_length` (77).
//!
//! A folder with a `tokenizer.json` is read from it; otherwise from
//! `vocab.json` and `merges.txt` as SD1.5 ships them. Special tokens come
//! from `tokenizer_config.json` and `special_tokens_map.json` when present,
//! else CLIP's.

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

/// CLIP's context length, and SD1.5's `model_max_length`.
pub const CLIP_MAX_LENGTH: usize = 77;

/// CLIP's pre-tokenisation regex (transformers' `CLIPTokenizer`).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";

/// Turns prompts into the fixed-length id sequences the CLIP text encoder reads.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

/// The special tokens and length a tokenizer folder declares.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTokenizerConfig {
    pub bos_token: AddedToken,
    pub eos_token: AddedToken,
    pub unk_token: AddedToken,
    pub pad_token: AddedToken,
    /// Length of every encoded sequence.
    pub model_max_length: usize,
}

impl Default for ClipTokenizerConfig {
    /// transformers' `CLIPTokenizer` defaults (pad = EOS), length 77.
    fn default() -> Self {
        let special = |content: &str| AddedToken::from(content, true);
        Self {
            bos_token: special(DEFAULT_BOS),
            eos_token: special(DEFAULT_EOS),
            unk_token: special(DEFAULT_EOS),
            pad_token: special(DEFAULT_EOS),
            model_max_length: CLIP_MAX_LENGTH,
        }
    }
}

impl ClipTokenizerConfig {
    /// Reads `tokenizer_config.json` then `special_tokens_map.json` (which
    /// wins, as in transformers) from `dir`; either may be absent.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut config = Self::default();
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(name);
            if path.is_file() {
                config.update(&path, &read_json(&path)?)?;
            }
        }
        Ok(config)
    }

    fn update(&mut self, path: &Path, json: &Value) -> Result<()> {
        let slots = [
            ("bos_token", &mut self.bos_token),
            ("eos_token", &mut self.eos_token),
            ("unk_token", &mut self.unk_token),
            ("pad_token", &mut self.pad_token),
        ];
        for (name, slot) in slots {
            if let Some(value) = json.get(name).filter(|v| !v.is_null()) {
                *slot = added_token(value).ok_or_else(|| Error::Config {
                    path: path.to_path_buf(),
                    message: format!("`{name}` must be a string or an object with a `content` string, found {value}"),
                })?;
            }
        }
        // transformers writes a huge float when no length is known: keep CLIP's then.
        if let Some(length) = json.get("model_max_length").and_then(Value::as_u64) {
            if length > 0 && length <= 1 << 20 {
                self.model_max_length = length as usize;
            }
        }
        Ok(())
    }
}

/// A special token as transformers stores it: a bare string (not
/// normalised) or an `AddedToken` object.
fn added_token(value: &Value) -> Option<AddedToken> {
    if let Some(content) = value.as_str() {
        return Some(AddedToken::from(content, true));
    }
    let content = value.get("content")?.as_str()?;
    let flag = |name: &str, default: bool| value.get(name).and_then(Value::as_bool).unwrap_or(default);
    Some(
        AddedToken::from(content, true)
            .single_word(flag("single_word", false))
            .lstrip(flag("lstrip", false))
            .rstrip(flag("rstrip", false))
            .normalized(flag("normalized", false)),
    )
}

impl ClipTokenizer {
    /// A diffusers `tokenizer/` folder: `tokenizer.json` if there is one,
    /// else `vocab.json` + `merges.txt`; plus the optional configs.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipTokenizerConfig::from_dir(dir)?;
        let tokenizer_json = dir.join("tokenizer.json");
        if tokenizer_json.is_file() {
            let tokenizer = Tokenizer::from_file(&tokenizer_json).map_err(|e| Error::Config {
                path: tokenizer_json.clone(),
                message: format!("cannot read tokenizer: {e}"),
            })?;
            Self::with_config(tokenizer, &config, &tokenizer_json)
        } else {
            Self::from_vocab_and_merges(&dir.join("vocab.json"), &dir.join("merges.txt"), &config)
        }
    }

    /// CLIP's byte-level BPE from `vocab.json` (token → id) and `merges.txt`
    /// (one `left right` pair a line, by rank; `#version` lines skipped).
    pub fn from_vocab_and_merges(vocab_path: &Path, merges_path: &Path, config: &ClipTokenizerConfig) -> Result<Self> {
        let vocab: HashMap<String, u32> = serde_json::from_value(read_json(vocab_path)?)
            .map_err(|cause| Error::Json { path: vocab_path.to_path_buf(), cause })?;
        let merges = read_merges(merges_path)?;
        let model = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
            .unk_token(config.unk_token.content.clone())
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .fuse_unk(false)
            .build()
            .map_err(|e| Error::Config {
                path: merges_path.to_path_buf(),
                message: format!("invalid BPE model: {e}"),
            })?;

        let mut tokenizer = Tokenizer::new(model);
        let config_error = |e: tokenizers::Error| Error::Tokenizer(format!("building it: {e}"));
        let whitespace = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(config_error)?;
        tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![NFC.into(), whitespace.into(), Lowercase.into()])));
        let split = Split::new(SplitPattern::Regex(CLIP_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(config_error)?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        Self::with_config(tokenizer, config, vocab_path)
    }

    /// Adds the special tokens, the BOS/EOS wrapping, truncation and padding.
    fn with_config(mut tokenizer: Tokenizer, config: &ClipTokenizerConfig, source: &Path) -> Result<Self> {
        let id = |token: &AddedToken| {
            tokenizer.token_to_id(&token.content).ok_or_else(|| Error::Config {
                path: source.to_path_buf(),
                message: format!("special token `{}` is not in the vocabulary", token.content),
            })
        };
        let (bos_id, eos_id, pad_id) = (id(&config.bos_token)?, id(&config.eos_token)?, id(&config.pad_token)?);
        id(&config.unk_token)?;
        // Where one token fills several roles (SD1.5: EOS = UNK = PAD), the
        // flags of the last role in transformers' order decide how it is
        // matched in a prompt (whether `<|ENDOFTEXT|>` counts, after
        // lower-casing), as transformers ends up doing.
        let roles = [&config.bos_token, &config.eos_token, &config.unk_token, &config.pad_token];
        let special: Vec<AddedToken> = roles
            .iter()
            .enumerate()
            .filter(|(i, token)| roles[i + 1..].iter().all(|later| later.content != token.content))
            .map(|(_, token)| (*token).clone())
            .collect();
        tokenizer.add_special_tokens(&special);
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new(
                (config.eos_token.content.clone(), eos_id),
                (config.bos_token.content.clone(), bos_id),
            )
            .trim_offsets(false)
            .add_prefix_space(false),
        ));
        let max_length = config.model_max_length;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::Config {
                path: source.to_path_buf(),
                message: format!("truncation to {max_length}: {e}"),
            })?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: config.pad_token.content.clone(),
        }));
        Ok(Self { tokenizer, max_length, bos_id, eos_id, pad_id })
    }

    /// `max_length` ids: BOS, the prompt's tokens (truncated), EOS, then padding.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding =
            self.tokenizer.encode(prompt, true).map_err(|e| Error::Tokenizer(format!("tokenizing {prompt:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// [`encode`](Self::encode) for each prompt, in order.
    pub fn encode_batch<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Vec<Vec<u32>>> {
        prompts.iter().map(|p| self.encode(p.as_ref())).collect()
    }

    /// Length of every encoded sequence (`model_max_length`, 77 for SD1.5).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Number of tokens, the special ones included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|cause| Error::Json { path: PathBuf::from(path), cause })
}

fn read_merges(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut merges = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("#version") {
            continue;
        }
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [left, right] => merges.push((left.to_string(), right.to_string())),
            _ => {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    message: format!("line {}: expected a merge `left right`, found {line:?}", number + 1),
                })
            }
        }
    }
    Ok(merges)
}
