//! Untrusted text as errors and logs show it: entry names, link targets,
//! media types and registry messages come from the image or the registry and
//! may be megabytes long, so they are cut to [`MAX_SHOWN`] bytes.

/// Most bytes of one untrusted value shown in an error or a log line.
pub const MAX_SHOWN: usize = 256;

/// `text`, cut to [`MAX_SHOWN`] bytes (on a character boundary) with its
/// full length appended when it is longer.
pub fn cut(text: &str) -> String {
    if text.len() <= MAX_SHOWN {
        return text.to_owned();
    }
    let mut end = MAX_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// Raw bytes as (lossy) UTF-8, cut like [`cut`]; the length appended is the
/// raw length.
pub fn lossy(raw: &[u8]) -> String {
    if raw.len() <= MAX_SHOWN {
        return String::from_utf8_lossy(raw).into_owned();
    }
    // At most 3 bytes of a character are split off; lossy decoding shows
    // them as one replacement character.
    let head = String::from_utf8_lossy(&raw[..MAX_SHOWN]);
    format!("{}... ({} bytes)", head.trim_end_matches('\u{fffd}'), raw.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_with_its_length() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(1000);
        let shown = cut(&long);
        assert!(shown.len() < MAX_SHOWN + 32, "{shown}");
        assert!(shown.ends_with("... (2000 bytes)"), "{shown}");
        let shown = lossy(long.as_bytes());
        assert!(shown.starts_with("éé") && shown.ends_with("... (2000 bytes)"), "{shown}");
        assert!(!shown.contains('\u{fffd}'), "{shown}");
        assert_eq!(lossy(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(lossy(&[b'x'; MAX_SHOWN]).len(), MAX_SHOWN);
    }
}
