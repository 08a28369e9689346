//! SentencePiece's `Normalizer::Normalize` (normalizer.cc), reproduced exactly: longest-prefix
//! rewriting with the model's precompiled charsmap (a Darts-clone double-array trie), removal of
//! extra whitespace, the dummy prefix and escaping of spaces as U+2581.
//!
//! `tokenizers`' `Precompiled` normalizer looks rules up per grapheme instead of by longest
//! byte prefix, which differs on combining marks (NFKC models); this one is what the ids use.
//! For charsmap-free models (`identity`, LLaMA-2) both agree.

use std::path::Path;

use crate::error::{Error, Result};

use super::proto::NormalizerSpec;
use super::SPACE_SYMBOL;

/// The double-array trie and the NUL-separated replacement strings of a precompiled charsmap.
#[derive(Debug, Clone)]
struct CharsMap {
    units: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    /// Splits `<trie size: u32 LE><trie units><normalized strings>`.
    fn parse(blob: &[u8]) -> std::result::Result<Self, String> {
        let size = blob
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("precompiled_charsmap shorter than its 4-byte header")?;
        let rest = &blob[4..];
        if size > rest.len() || size % 4 != 0 {
            return Err(format!(
                "precompiled_charsmap trie size {size} does not fit its {} bytes",
                rest.len()
            ));
        }
        let units = rest[..size]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(CharsMap {
            units,
            normalized: rest[size..].to_vec(),
        })
    }

    /// Longest rule matching a prefix of `input`: (replacement, bytes consumed).
    fn longest_prefix(&self, input: &[u8]) -> Option<(&[u8], usize)> {
        // Darts-clone unit layout: label in bits 0-7 (and 31), has_leaf bit 8, offset bits
        // 10-31 shifted by 8 when bit 9 is set; a leaf unit holds the value in bits 0-30.
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let label = |u: u32| u & ((1 << 31) | 0xFF);
        let has_leaf = |u: u32| (u >> 8) & 1 == 1;
        let mut best: Option<(usize, usize)> = None;
        let mut pos = offset(*self.units.first()?);
        for (i, &c) in input.iter().enumerate() {
            pos ^= c as usize;
            let unit = *self.units.get(pos)?;
            if label(unit) != u32::from(c) {
                break;
            }
            pos ^= offset(unit);
            if has_leaf(unit) {
                let value = (*self.units.get(pos)? & ((1 << 31) - 1)) as usize;
                best = Some((value, i + 1));
            }
        }
        let (value, len) = best?;
        let tail = self.normalized.get(value..)?;
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        Some((&tail[..end], len))
    }
}

/// SentencePiece's normalizer for one model.
#[derive(Debug, Clone)]
pub struct SpNormalizer {
    charsmap: Option<CharsMap>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl SpNormalizer {
    /// Builds the normalizer of `spec`; `path` names the model in errors.
    pub fn new(spec: &NormalizerSpec, path: &Path) -> Result<Self> {
        let charsmap = if spec.precompiled_charsmap.is_empty() {
            None
        } else {
            Some(
                CharsMap::parse(&spec.precompiled_charsmap).map_err(|message| {
                    Error::SentencePieceModel {
                        path: path.to_path_buf(),
                        message,
                    }
                })?,
            )
        };
        Ok(SpNormalizer {
            charsmap,
            add_dummy_prefix: spec.add_dummy_prefix,
            remove_extra_whitespaces: spec.remove_extra_whitespaces,
            escape_whitespaces: spec.escape_whitespaces,
        })
    }

    /// The rewrite of the prefix of `input`: (replacement, bytes consumed).
    fn prefix<'a>(&'a self, input: &'a [u8]) -> (&'a [u8], usize) {
        if let Some(rule) = self.charsmap.as_ref().and_then(|m| m.longest_prefix(input)) {
            return rule;
        }
        // No rule: copy one character (input is a &str, so always valid UTF-8).
        let len = match input[0] {
            b if b < 0x80 => 1,
            b if b >> 5 == 0b110 => 2,
            b if b >> 4 == 0b1110 => 3,
            _ => 4,
        }
        .min(input.len());
        (&input[..len], len)
    }

    /// `text` as SentencePiece's BPE sees it.
    pub fn normalize(&self, text: &str) -> String {
        let mut input = text.as_bytes();
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (rep, n) = self.prefix(input);
                if rep != b" " {
                    break;
                }
                input = &input[n..];
            }
        }
        if input.is_empty() {
            return String::new();
        }
        let space: &[u8] = if self.escape_whitespaces {
            SPACE_SYMBOL.as_bytes()
        } else {
            b" "
        };
        let mut out: Vec<u8> = Vec::with_capacity(input.len() * 3);
        if self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut rep, n) = self.prefix(input);
            while is_prev_space && rep.first() == Some(&b' ') {
                rep = &rep[1..];
            }
            if !rep.is_empty() {
                for &b in rep {
                    if b == b' ' {
                        out.extend_from_slice(space);
                    } else {
                        out.push(b);
                    }
                }
                is_prev_space = rep.last() == Some(&b' ');
            }
            input = &input[n..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        // Rules map whole characters to whole characters, so this only fails on a corrupt
        // charsmap; SentencePiece would pass the bytes on, we substitute U+FFFD.
        match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(add: bool, remove: bool, escape: bool) -> NormalizerSpec {
        NormalizerSpec {
            name: "identity".into(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: add,
            remove_extra_whitespaces: remove,
            escape_whitespaces: escape,
        }
    }

    #[test]
    fn whitespace_rules() {
        let p = Path::new("t.model");
        let llama = SpNormalizer::new(&spec(true, false, true), p).expect("normalizer");
        assert_eq!(llama.normalize(""), "");
        assert_eq!(llama.normalize(" a  b "), "▁▁a▁▁b▁");
        let default = SpNormalizer::new(&spec(true, true, true), p).expect("normalizer");
        assert_eq!(default.normalize("   "), "");
        assert_eq!(default.normalize("  a   b  "), "▁a▁b");
        // Trailing U+2581 written literally is stripped too, as in normalizer.cc.
        assert_eq!(default.normalize("a ▁"), "▁a");
        let raw = SpNormalizer::new(&spec(false, true, false), p).expect("normalizer");
        assert_eq!(raw.normalize(" a  b "), "a b");
    }

    #[test]
    fn bad_charsmap_is_an_error() {
        let mut s = spec(true, true, true);
        s.precompiled_charsmap = vec![0xff, 0xff, 0, 0, 1, 2];
        let err = SpNormalizer::new(&s, Path::new("bad.model")).expect_err("bad charsmap");
        assert!(err.to_string().contains("bad.model"), "{err}");
    }
}
