//! CoreNet-mode text cleanup: an approximation of `ftfy.fix_text(text, normalization="NFC")`
//! with ftfy 6's default configuration, applied in the same order.
//!
//! Implemented (as ftfy does by default):
//! - `unescape_html="auto"`: HTML entities are decoded unless the text contains `<`. Numeric
//!   entities and a common subset of named ones; ftfy knows all of HTML5's names.
//! - `remove_terminal_escapes`: ANSI `ESC [ ... letter` sequences are removed.
//! - `fix_encoding`: each maximal run of non-ASCII characters that all map to bytes in
//!   (sloppy) Windows-1252 is re-decoded as UTF-8 when that succeeds ("Ã©" → "é",
//!   "â€™" → "’", then uncurled). ftfy scores candidate fixes with a "badness" heuristic,
//!   also tries Latin-1/MacRoman/cp437 and mixed runs; we only take whole runs that decode.
//! - `fix_c1_controls`: U+0080–U+009F decoded as Windows-1252.
//! - `fix_latin_ligatures`, `fix_character_width` (fullwidth ASCII and U+3000 only; ftfy also
//!   maps halfwidth katakana), `uncurl_quotes` (ftfy's default is to straighten curly quotes),
//!   `fix_line_breaks`, `remove_control_chars` (ftfy's list, without the musical-symbol and
//!   tag ranges' finer points), and finally NFC via `unicode-normalization`.
//!
//! Not implemented: `restore_byte_a0`, `replace_lossy_sequences`, `decode_inconsistent_utf8`
//! and `fix_surrogates` (Rust strings cannot hold surrogates anyway).

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

/// Cleans `text` as described in the module documentation.
pub fn fix_text(text: &str) -> String {
    let mut s: Cow<'_, str> = Cow::Borrowed(text);
    if !s.contains('<') && s.contains('&') {
        s = Cow::Owned(unescape_html(&s));
    }
    if s.contains('\u{1b}') {
        s = Cow::Owned(remove_terminal_escapes(&s));
    }
    if !s.is_ascii() {
        s = Cow::Owned(fix_encoding(&s));
    }
    let fixed: String = s.chars().filter_map(fix_char).collect::<String>();
    fix_line_breaks(&fixed).nfc().collect()
}

/// Per-character fixes: C1 controls, ligatures, width, quotes, control removal.
/// Ligatures expand to several letters, so they are handled before this filter (see below).
fn fix_char(c: char) -> Option<char> {
    let c = match c as u32 {
        0x80..=0x9F => cp1252_char(c as u8),
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        0x3000 => ' ',
        _ => c,
    };
    let c = match c {
        '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => '\'',
        '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => '"',
        _ => c,
    };
    (!is_removable_control(c)).then_some(c)
}

fn is_removable_control(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC
        | 0x1D173..=0x1D17A | 0xE0000..=0xE007F)
}

/// `\r\n`, `\r`, U+2028, U+2029 and U+0085 become `\n`; also expands Latin ligatures.
fn fix_line_breaks(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            _ => match ligature(c) {
                Some(l) => out.push_str(l),
                None => out.push(c),
            },
        }
    }
    out
}

fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{FB00}' => "ff",
        '\u{FB01}' => "fi",
        '\u{FB02}' => "fl",
        '\u{FB03}' => "ffi",
        '\u{FB04}' => "ffl",
        '\u{FB05}' | '\u{FB06}' => "st",
        '\u{0132}' => "IJ",
        '\u{0133}' => "ij",
        '\u{0149}' => "\u{2bc}n",
        '\u{01C7}' => "LJ",
        '\u{01C8}' => "Lj",
        '\u{01C9}' => "lj",
        '\u{01CA}' => "NJ",
        '\u{01CB}' => "Nj",
        '\u{01CC}' => "nj",
        _ => return None,
    })
}

/// Windows-1252 bytes 0x80–0x9F; the five undefined ones map to themselves as ftfy's
/// "sloppy" codec does.
const CP1252_HIGH: [u16; 32] = [
    0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
];

fn cp1252_char(b: u8) -> char {
    match b {
        0x80..=0x9F => char::from_u32(CP1252_HIGH[(b - 0x80) as usize] as u32).unwrap_or(b as char),
        _ => b as char,
    }
}

/// The sloppy-Windows-1252 byte of a non-ASCII character, if it has one.
fn cp1252_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if (0xA0..=0xFF).contains(&u) {
        return Some(u as u8);
    }
    CP1252_HIGH
        .iter()
        .position(|&x| x as u32 == u)
        .map(|i| 0x80 + i as u8)
}

/// Re-decodes runs of mojibake (UTF-8 bytes that were decoded as Windows-1252).
fn fix_encoding(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run_start: Option<usize> = None;
    for (i, c) in s.char_indices().chain(std::iter::once((s.len(), '\0'))) {
        let in_run = i < s.len() && cp1252_byte(c).is_some();
        match (in_run, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(st)) => {
                push_run(&mut out, &s[st..i]);
                run_start = None;
            }
            _ => {}
        }
        if !in_run && i < s.len() {
            out.push(c);
        }
    }
    out
}

fn push_run(out: &mut String, run: &str) {
    let bytes: Vec<u8> = run.chars().filter_map(cp1252_byte).collect();
    match std::str::from_utf8(&bytes) {
        Ok(decoded) if decoded.chars().count() < run.chars().count() => out.push_str(decoded),
        _ => out.push_str(run),
    }
}

fn remove_terminal_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters are digits and ';'; the sequence ends with one letter.
            while let Some(&p) = chars.peek() {
                chars.next();
                if p.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes `&name;`, `&#123;` and `&#x1F;` entities; unknown ones are kept verbatim.
fn unescape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest
            .get(1..rest.len().min(12))
            .and_then(|w| w.find(';').map(|semi| (&w[..semi], semi + 2)))
            .and_then(|(name, len)| entity(name).map(|c| (c, len)));
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code);
    }
    let c = match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "eacute" => 'é',
        "Eacute" | "EACUTE" => 'É',
        "egrave" => 'è',
        "agrave" => 'à',
        "uuml" => 'ü',
        "ouml" => 'ö',
        "auml" => 'ä',
        "szlig" => 'ß',
        "euro" => '€',
        "pound" => '£',
        "deg" => '°',
        _ => return None,
    };
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_ftfy_fixes() {
        assert_eq!(
            fix_text("The Mona Lisa doesnâ€™t have eyebrows."),
            "The Mona Lisa doesn't have eyebrows."
        );
        assert_eq!(fix_text("cafÃ© &amp; bar"), "café & bar");
        assert_eq!(fix_text("<b>&amp;</b>"), "<b>&amp;</b>");
        assert_eq!(fix_text("a\r\nb\rc"), "a\nb\nc");
        assert_eq!(fix_text("\u{1b}[31mred\u{1b}[0m"), "red");
        assert_eq!(fix_text("ﬁne ＡＢＣ"), "fine ABC");
        assert_eq!(fix_text("e\u{301}"), "é");
        assert_eq!(fix_text("naïve café, Straße"), "naïve café, Straße");
        assert_eq!(fix_text("“quoted”"), "\"quoted\"");
        assert_eq!(fix_text("a\u{0}b\u{feff}"), "ab");
    }
}
