//! Entry name validation: relative paths of normal components only.

/// A validated path below the layer root: no empty, `.` or `..` components.
/// No components at all means the layer root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntryPath {
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    /// Validates a raw tar name: refuses absolute paths, `..` components,
    /// empty names and NUL bytes; drops `.` components and repeated or
    /// trailing slashes (so a leading `./` is stripped).
    pub(super) fn parse(raw: &[u8]) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("empty name");
        }
        if raw.contains(&0) {
            return Err("name contains a NUL byte");
        }
        if raw.starts_with(b"/") {
            return Err("absolute path");
        }
        let mut components = Vec::new();
        for component in raw.split(|&b| b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => return Err("`..` component"),
                normal => components.push(normal.to_vec()),
            }
        }
        Ok(Self { components })
    }

    /// Whether this is the layer root (`.` or `./`).
    pub(super) fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The last component, `None` for the root.
    pub(super) fn name(&self) -> Option<&[u8]> {
        self.components.last().map(Vec::as_slice)
    }

    /// The components before the last one.
    pub(super) fn parent(&self) -> &[Vec<u8>] {
        match self.components.split_last() {
            Some((_, parent)) => parent,
            None => &[],
        }
    }

    /// All components joined with `/` (`.` for the root).
    pub(super) fn joined(&self) -> Vec<u8> {
        join(&self.components)
    }
}

/// Components joined with `/`, `.` when there are none.
pub(super) fn join(components: &[Vec<u8>]) -> Vec<u8> {
    if components.is_empty() {
        return b".".to_vec();
    }
    components.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_path_parse() {
        let ok = |raw: &[u8]| EntryPath::parse(raw).expect("valid name").joined();
        assert_eq!(ok(b"./etc/passwd"), b"etc/passwd");
        assert_eq!(ok(b"etc//x/./y/"), b"etc/x/y");
        assert_eq!(ok(b"./"), b".");
        assert!(EntryPath::parse(b".").expect("root").is_root());
        assert_eq!(EntryPath::parse(b"a/b/c").expect("valid").parent(), &[b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(EntryPath::parse(b"a/b/c").expect("valid").name(), Some(&b"c"[..]));
        assert_eq!(EntryPath::parse(b"a..b/..c").expect("valid").joined(), b"a..b/..c");
        for (raw, reason) in [
            (&b""[..], "empty name"),
            (b"/etc/x", "absolute path"),
            (b"../x", "`..` component"),
            (b"a/../../x", "`..` component"),
            (b"./..", "`..` component"),
            (b"a\0b", "name contains a NUL byte"),
        ] {
            assert_eq!(EntryPath::parse(raw), Err(reason), "{:?}", String::from_utf8_lossy(raw));
        }
    }
}
