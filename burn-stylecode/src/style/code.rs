//! The stylecode text format.
//!
//! A stylecode is 20 values of 6 bits (120 bits) plus the version of the
//! encoder/decoder weights that made it. Two spellings exist:
//!
//! * **paper** (canonical): one standard-base64 symbol per value, then one
//!   version character: 21 characters, e.g. `CL_dLAAAI_rQgl...1`.
//! * **official** (the PyTorch release): the 20 values as 20 bytes, standard
//!   base64 with the `=` padding stripped: 27 characters, no version.
//!
//! Both carry the same 120 bits, so conversion is lossless.

pub use crate::error::{BlendError, CodeError};
use std::fmt;
use std::str::FromStr;

/// Number of latent dimensions a code carries.
pub const CODE_LEN: usize = 20;
/// Bits per value.
pub const BITS: u32 = 6;
/// Largest quantised value, `2^BITS - 1`.
pub const MAX_VALUE: u8 = 63;
/// The version of the official `stylecodes_sd15_v1` weights.
pub const OFFICIAL_VERSION: char = '1';

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const PAPER_LEN: usize = CODE_LEN + 1;
/// `ceil(20 * 8 / 6)`: base64 of 20 bytes without padding.
const OFFICIAL_LEN: usize = 27;

/// Which spelling a code was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeFormat {
    /// 20 base64 symbols + 1 version character.
    Paper,
    /// 20 bytes as unpadded base64 (the official release's form).
    Official,
}

impl CodeFormat {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            CodeFormat::Paper => "paper",
            CodeFormat::Official => "official",
        }
    }
}

impl FromStr for CodeFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "paper" => Ok(CodeFormat::Paper),
            "official" => Ok(CodeFormat::Official),
            other => Err(format!("unknown code format `{other}`: expected `paper` or `official`")),
        }
    }
}

/// A parsed stylecode: 20 quantised values in `0..=63` and the version of
/// the weights that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StyleCode {
    values: [u8; CODE_LEN],
    version: char,
}

impl StyleCode {
    /// A code from raw 6-bit values. The version must be a base64 symbol.
    pub fn new(values: [u8; CODE_LEN], version: char) -> Result<Self, CodeError> {
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, &v)| v > MAX_VALUE) {
            return Err(CodeError::Value { index, value });
        }
        if symbol_index(version).is_none() {
            return Err(CodeError::VersionSymbol { character: version });
        }
        Ok(Self { values, version })
    }

    /// Quantises a latent vector as the reference does. A NaN or an
    /// infinity (a broken network) has no code: an error naming its index.
    pub fn from_latent(latent: &[f32; CODE_LEN], version: char) -> Result<Self, CodeError> {
        let mut values = [0; CODE_LEN];
        for (index, (slot, &x)) in values.iter_mut().zip(latent).enumerate() {
            *slot = quantize(x).ok_or_else(|| CodeError::NonFinite { index, value: x.to_string() })?;
        }
        StyleCode::new(values, version)
    }

    /// The 20 values, each in `0..=63`.
    pub fn values(&self) -> &[u8; CODE_LEN] {
        &self.values
    }

    /// The version character of the weights that made the code.
    pub fn version(&self) -> char {
        self.version
    }

    /// The dequantised latent the decoder consumes.
    pub fn latent(&self) -> [f32; CODE_LEN] {
        self.values.map(dequantize)
    }

    /// Parses either spelling and reports which one it was.
    ///
    /// Official codes carry no version; they are the official weights',
    /// version [`OFFICIAL_VERSION`].
    pub fn parse(text: &str) -> Result<(Self, CodeFormat), CodeError> {
        let len = text.chars().count();
        let stripped = text.strip_suffix('=').unwrap_or(text);
        match len {
            PAPER_LEN => Ok((Self::parse_paper(text)?, CodeFormat::Paper)),
            _ if stripped.chars().count() == OFFICIAL_LEN => {
                Ok((Self::parse_official(text, stripped)?, CodeFormat::Official))
            }
            _ => Err(CodeError::Length { code: text.to_string(), len }),
        }
    }

    fn parse_paper(text: &str) -> Result<Self, CodeError> {
        let mut values = [0u8; CODE_LEN];
        let mut chars = text.chars();
        for (position, slot) in values.iter_mut().enumerate() {
            let character = chars.next().expect("length checked");
            *slot = symbol_index(character).ok_or_else(|| CodeError::Character {
                code: text.to_string(),
                character,
                position,
            })?;
        }
        let version = chars.next().expect("length checked");
        if symbol_index(version).is_none() {
            return Err(CodeError::Version { code: text.to_string(), character: version, position: CODE_LEN });
        }
        Ok(Self { values, version })
    }

    fn parse_official(text: &str, stripped: &str) -> Result<Self, CodeError> {
        // 27 symbols = 162 bits: the 20 bytes then 2 zero bits.
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut bytes = Vec::with_capacity(CODE_LEN);
        for (position, character) in stripped.chars().enumerate() {
            let symbol = symbol_index(character).ok_or_else(|| CodeError::Character {
                code: text.to_string(),
                character,
                position,
            })?;
            bits = (bits << 6) | u32::from(symbol);
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                bytes.push((bits >> nbits) as u8);
                bits &= (1 << nbits) - 1;
            }
        }
        if bits != 0 {
            return Err(CodeError::TrailingBits { code: text.to_string(), position: OFFICIAL_LEN - 1 });
        }
        let mut values = [0u8; CODE_LEN];
        for (index, (slot, &value)) in values.iter_mut().zip(&bytes).enumerate() {
            if value > MAX_VALUE {
                return Err(CodeError::ValueRange { code: text.to_string(), index, value });
            }
            *slot = value;
        }
        Ok(Self { values, version: OFFICIAL_VERSION })
    }

    /// The paper spelling: 20 symbols and the version (21 characters).
    pub fn to_paper(&self) -> String {
        let mut text: String = self.values.iter().map(|&v| ALPHABET[v as usize] as char).collect();
        text.push(self.version);
        text
    }

    /// The official spelling: 20 bytes as unpadded base64 (27 characters).
    /// It has no room for the version.
    pub fn to_official(&self) -> String {
        let mut text = String::with_capacity(OFFICIAL_LEN);
        for chunk in self.values.chunks(3) {
            let mut group = [0u8; 3];
            group[..chunk.len()].copy_from_slice(chunk);
            let n = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
            let symbols = chunk.len() + 1;
            for i in 0..symbols {
                text.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        text
    }

    /// The code in the given spelling.
    pub fn format(&self, format: CodeFormat) -> String {
        match format {
            CodeFormat::Paper => self.to_paper(),
            CodeFormat::Official => self.to_official(),
        }
    }
}

impl fmt::Display for StyleCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_paper())
    }
}

impl FromStr for StyleCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, CodeError> {
        StyleCode::parse(s).map(|(code, _)| code)
    }
}

/// A code with a blending weight, written `CODE:WEIGHT` (the weight is
/// optional and defaults to 1; `:` is not a base64 symbol).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightedCode {
    pub code: StyleCode,
    pub weight: f32,
}

impl From<StyleCode> for WeightedCode {
    /// The code alone, weight 1.
    fn from(code: StyleCode) -> Self {
        Self { code, weight: 1.0 }
    }
}

impl FromStr for WeightedCode {
    type Err = BlendError;
    fn from_str(text: &str) -> Result<Self, BlendError> {
        let (code, weight) = match text.rsplit_once(':') {
            Some((code, weight)) => {
                let parsed: f32 = weight.trim().parse().map_err(|_| BlendError::Weight { text: text.to_string() })?;
                (code, parsed)
            }
            None => (text, 1.0),
        };
        if !weight.is_finite() || weight < 0.0 {
            return Err(BlendError::Weight { text: text.to_string() });
        }
        Ok(Self { code: StyleCode::parse(code)?.0, weight })
    }
}

/// The weighted mean of the codes' dequantised latents, and their common version.
pub fn blend(codes: &[WeightedCode]) -> Result<([f32; CODE_LEN], char), BlendError> {
    let first = codes.first().ok_or(BlendError::Empty)?;
    if let Some(other) = codes.iter().find(|c| c.code.version() != first.code.version()) {
        return Err(BlendError::Versions {
            first: first.code.to_paper(),
            first_version: first.code.version(),
            other: other.code.to_paper(),
            other_version: other.code.version(),
        });
    }
    let total: f32 = codes.iter().map(|c| c.weight).sum();
    if total <= 0.0 {
        return Err(BlendError::ZeroWeight);
    }
    let mut latent = [0f32; CODE_LEN];
    for c in codes {
        for (sum, x) in latent.iter_mut().zip(c.code.latent()) {
            *sum += c.weight / total * x;
        }
    }
    Ok((latent, first.code.version()))
}

/// A uniformly random code of the given version.
pub fn random_code(rng: &mut impl FnMut() -> u64, version: char) -> Result<StyleCode, CodeError> {
    let values = std::array::from_fn(|_| (rng() % 64) as u8);
    StyleCode::new(values, version)
}

/// `floor(clip((x + 1) * 63/2, 0, 63))`, in f32 as the reference computes it,
/// except that a value within [`SNAP`] below a step counts as on it.
///
/// In f32, `q * 2/63 - 1` lands a hair below step `q` for q = 1..=15, so the
/// reference formula re-encodes a decoded code with those values one lower.
/// The snap makes decode → encode the identity; it changes the reference's
/// result only for latents within 3e-6 below a step. NaN and the
/// infinities have no value (`None`): clamping would make them a valid-looking
/// 0 or 63.
pub fn quantize(x: f32) -> Option<u8> {
    if !x.is_finite() {
        return None;
    }
    let scaled = (x + 1.0) * (f32::from(MAX_VALUE) / 2.0) + SNAP;
    // Floor first to truncate like numpy's `astype(uint8)`.
    Some(scaled.clamp(0.0, f32::from(MAX_VALUE)).floor() as u8)
}

/// Tolerance of [`quantize`], in steps: above the f32 error of
/// `(dequantize(q) + 1) * 63/2`, about 2e-6.
pub const SNAP: f32 = 1e-4;

/// `q * 2/63 - 1`.
pub fn dequantize(q: u8) -> f32 {
    f32::from(q) * 2.0 / f32::from(MAX_VALUE) - 1.0
}

/// Whether `c` can be a version character (a standard base64 symbol).
pub fn is_version_char(c: char) -> bool {
    symbol_index(c).is_some()
}

fn symbol_index(c: char) -> Option<u8> {
    let b = u8::try_from(c).ok()?;
    ALPHABET.iter().position(|&a| a == b).map(|i| i as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OFFICIAL_EXAMPLE: &str = "Aj8dPwAACD8rECAlCC8UGzU/HwI";
    const OFFICIAL_VALUES: [u8; 20] = [2, 63, 29, 63, 0, 0, 8, 63, 43, 16, 32, 37, 8, 47, 20, 27, 53, 63, 31, 2];

    #[test]
    fn official_example_decodes() {
        let (code, format) = StyleCode::parse(OFFICIAL_EXAMPLE).unwrap();
        assert_eq!(format, CodeFormat::Official);
        assert_eq!(code.values(), &OFFICIAL_VALUES);
        assert_eq!(code.version(), '1');
        assert_eq!(code.to_official(), OFFICIAL_EXAMPLE);
        assert_eq!(code.to_paper(), "C/d/AAI/rQglIvUb1/fC1");
    }

    #[test]
    fn official_padding_is_accepted() {
        let (code, _) = StyleCode::parse(&format!("{OFFICIAL_EXAMPLE}=")).unwrap();
        assert_eq!(code.values(), &OFFICIAL_VALUES);
    }

    #[test]
    fn errors_name_position_and_character() {
        let err = StyleCode::parse("AAAAAAAAAA*AAAAAAAAA1").unwrap_err();
        assert_eq!(err, CodeError::Character { code: "AAAAAAAAAA*AAAAAAAAA1".into(), character: '*', position: 10 });
        assert!(err.to_string().contains("position 10"));

        let err = StyleCode::parse("AAAAAAAAAAAAAAAAAAAA!").unwrap_err();
        assert!(matches!(err, CodeError::Version { character: '!', position: 20, .. }));

        let err = StyleCode::parse("short").unwrap_err();
        assert_eq!(err, CodeError::Length { code: "short".into(), len: 5 });

        // 0xFF as the first byte: "/w" + zeros.
        let err = StyleCode::parse("/wAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap_err();
        assert!(matches!(err, CodeError::ValueRange { index: 0, value: 255, .. }), "{err}");

        let err = StyleCode::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAB").unwrap_err();
        assert!(matches!(err, CodeError::TrailingBits { .. }), "{err}");

        // Multi-byte characters count as one character each.
        let err = StyleCode::parse("AAAAAAAAAAAAAAAAAAAé1").unwrap_err();
        assert!(matches!(err, CodeError::Character { character: 'é', position: 19, .. }), "{err}");
    }

    #[test]
    fn blending_is_a_weighted_mean_of_latents() {
        let a: WeightedCode = "AAAAAAAAAAAAAAAAAAAA1:3".parse().unwrap();
        let b: WeightedCode = "////////////////////1:1".parse().unwrap();
        let (latent, version) = blend(&[a, b]).unwrap();
        assert_eq!(version, '1');
        assert!(latent.iter().all(|x| (x - (-0.5)).abs() < 1e-6), "{latent:?}");
        // A lone code blends to itself.
        let (latent, _) = blend(&["C/d/AAI/rQglIvUb1/fC1".parse().unwrap()]).unwrap();
        assert_eq!(StyleCode::from_latent(&latent, '1').unwrap().to_paper(), "C/d/AAI/rQglIvUb1/fC1");
        assert!(matches!("AAAAAAAAAAAAAAAAAAAA1:x".parse::<WeightedCode>(), Err(BlendError::Weight { .. })));
        assert!(matches!("AAAAAAAAAAAAAAAAAAAA1:-1".parse::<WeightedCode>(), Err(BlendError::Weight { .. })));
        let v2: WeightedCode = "AAAAAAAAAAAAAAAAAAAA2".parse().unwrap();
        assert!(matches!(blend(&[a, v2]), Err(BlendError::Versions { .. })));
        assert!(matches!(blend(&[]), Err(BlendError::Empty)));
        let zero: WeightedCode = "AAAAAAAAAAAAAAAAAAAA1:0".parse().unwrap();
        assert!(matches!(blend(&[zero]), Err(BlendError::ZeroWeight)));
    }

    #[test]
    fn quantize_matches_reference_formula() {
        assert_eq!(quantize(-1.0), Some(0));
        assert_eq!(quantize(-5.0), Some(0));
        assert_eq!(quantize(1.0), Some(63));
        assert_eq!(quantize(7.0), Some(63));
        assert_eq!(quantize(0.0), Some(31)); // 31.5 floors to 31
        assert_eq!(dequantize(0), -1.0);
        assert_eq!(dequantize(63), 1.0);
    }

    #[test]
    fn a_non_finite_latent_has_no_code() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(quantize(bad), None);
            let mut latent = [0.25; CODE_LEN];
            latent[7] = bad;
            let err = StyleCode::from_latent(&latent, OFFICIAL_VERSION).unwrap_err();
            assert_eq!(err, CodeError::NonFinite { index: 7, value: bad.to_string() });
            assert!(err.to_string().contains("latent value 7"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn paper_text_round_trips(values in prop::array::uniform20(0u8..64), version in 0usize..64) {
            let code = StyleCode::new(values, ALPHABET[version] as char).unwrap();
            let text = code.to_paper();
            prop_assert_eq!(text.len(), 21);
            prop_assert_eq!(StyleCode::parse(&text).unwrap(), (code, CodeFormat::Paper));
        }

        #[test]
        fn official_text_round_trips(values in prop::array::uniform20(0u8..64)) {
            let code = StyleCode::new(values, OFFICIAL_VERSION).unwrap();
            let text = code.to_official();
            prop_assert_eq!(text.len(), 27);
            prop_assert_eq!(StyleCode::parse(&text).unwrap(), (code, CodeFormat::Official));
            // paper <-> official is lossless
            let (paper, _) = StyleCode::parse(&code.to_paper()).unwrap();
            prop_assert_eq!(paper.to_official(), text);
        }

        #[test]
        fn quantize_inverts_dequantize(q in 0u8..64) {
            prop_assert_eq!(quantize(dequantize(q)), Some(q));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = StyleCode::parse(&text);
        }
    }
}
