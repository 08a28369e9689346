//! Cutting documents into pieces, without copying or splitting the whole document first
//! (a document may be 100 MB). Pieces are byte ranges, so a stream state can say "resume at
//! byte N of this document".

/// End of the CoreNet piece starting at `start`: Python's `text.split(" ")` grouped by
/// `words` and re-joined with `" "` gives exactly the substrings between every `words`-th
/// single space, so the piece ends just before the `words`-th space after `start`.
pub fn corenet_piece_end(text: &str, start: usize, words: usize) -> usize {
    let tail = &text.as_bytes()[start..];
    match memchr::memchr_iter(b' ', tail).nth(words.saturating_sub(1)) {
        Some(i) => start + i,
        None => text.len(),
    }
}

/// Start of the piece after one ending at `end` (skips the separating space).
pub fn corenet_next_start(text: &str, end: usize) -> usize {
    if end < text.len() {
        end + 1
    } else {
        end
    }
}

/// End of a packed-mode piece: at most `max_bytes` long, cut just before whitespace when
/// possible so byte-level BPE sees the same words as in the unsplit text.
pub fn packed_piece_end(text: &str, start: usize, max_bytes: usize) -> usize {
    if text.len() - start <= max_bytes {
        return text.len();
    }
    let mut limit = start + max_bytes;
    while !text.is_char_boundary(limit) {
        limit -= 1;
    }
    let window = &text[start..limit];
    match window.rfind(char::is_whitespace) {
        Some(i) if i > 0 => start + i,
        _ if limit > start => limit,
        // A single character longer than max_bytes: take it whole.
        _ => {
            start
                + text[start..]
                    .chars()
                    .next()
                    .map_or(text.len() - start, char::len_utf8)
        }
    }
}

/// Length in characters of CoreNet's normalised copy (lower-case, ASCII punctuation removed,
/// whitespace runs collapsed, trimmed), counted only up to `cap` since only `< min` matters.
pub fn normalized_len(text: &str, cap: usize) -> usize {
    let (mut n, mut pending_space) = (0usize, false);
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            continue;
        }
        if c.is_whitespace() {
            pending_space = n > 0;
            continue;
        }
        if pending_space {
            n += 1;
            pending_space = false;
        }
        n += c.to_lowercase().count();
        if n >= cap {
            return n;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python_split(text: &str, words: usize) -> Vec<String> {
        let w: Vec<&str> = text.split(' ').collect();
        w.chunks(words).map(|c| c.join(" ")).collect()
    }

    fn our_split(text: &str, words: usize) -> Vec<String> {
        let (mut out, mut start) = (Vec::new(), 0);
        loop {
            let end = corenet_piece_end(text, start, words);
            out.push(text[start..end].to_string());
            if end >= text.len() {
                return out;
            }
            start = corenet_next_start(text, end);
        }
    }

    #[test]
    fn matches_python_split_join() {
        for text in ["a b c d e", "a  b c ", " a b", "", "one", "a b c d e f g"] {
            for words in [1, 2, 3] {
                assert_eq!(
                    our_split(text, words),
                    python_split(text, words),
                    "{text:?} {words}"
                );
            }
        }
    }

    #[test]
    fn packed_pieces_cover_text_and_respect_limit() {
        let text = "héllo wörld ".repeat(50) + &"x".repeat(100);
        let (mut start, mut joined) = (0, String::new());
        while start < text.len() {
            let end = packed_piece_end(&text, start, 16);
            assert!(end > start && end - start <= 16);
            joined.push_str(&text[start..end]);
            start = end;
        }
        assert_eq!(joined, text);
    }

    #[test]
    fn normalized_length() {
        assert_eq!(
            normalized_len("  Hello,   World!! ", 100),
            "hello world".len()
        );
        assert_eq!(normalized_len("...", 100), 0);
        assert_eq!(normalized_len(&"ab ".repeat(1000), 10), 10);
    }
}
