//! The jail of the object backend: virtual paths to object keys under the session's prefix,
//! and back.
//!
//! A key is the prefix's parts followed by the path's components, parsed with
//! `object_store::path::Path::parse`, so names reach the store byte for byte (no
//! percent-encoding, which `Path::from` would add). What `Path::parse` refuses — a name
//! with an ASCII control character — and names that are not UTF-8 (S3 keys are UTF-8
//! text) are refused with `InvalidInput`. The name [`DIR_MARKER`] is reserved for the
//! empty objects that keep MKDIR'ed directories.
//!
//! Every key made here is checked to lie strictly below the prefix before it is returned,
//! though `VPath` has already resolved `..`: the check is cheap and the jail should not
//! depend on one invariant of another crate.

use object_store::path::Path;
use sftpgate_vfs::{FsError, VPath};

/// The name of the empty object that keeps a directory made by MKDIR: `<dir>/.sftpgate-dir`.
/// It is hidden from listings, and clients cannot use it as a name.
pub const DIR_MARKER: &str = ".sftpgate-dir";

/// The marker key of the directory `dir`. Built with `Path::parse`: `Path::child`/`join`
/// would percent-encode (harmless for the marker's name, but one way to build keys is
/// easier to check).
pub(crate) fn marker_of(dir: &Path) -> Path {
    Path::parse(format!("{}/{DIR_MARKER}", dir.as_ref())).expect("a key plus a plain name parses")
}

/// Maps a session's virtual paths to keys below its prefix.
#[derive(Debug, Clone)]
pub(crate) struct KeyMap {
    prefix: Path,
}

impl KeyMap {
    /// A map onto `prefix` (`""` for the whole bucket). The prefix is parsed like a key:
    /// `a/b` and `/a/b/` are the same prefix.
    pub(crate) fn new(prefix: &str) -> Result<KeyMap, FsError> {
        let prefix = Path::parse(prefix).map_err(|e| {
            FsError::InvalidInput(format!("object storage prefix is not a valid key: {e}").into())
        })?;
        Ok(KeyMap { prefix })
    }

    /// The prefix itself: the key under which the session's root lists.
    #[cfg(test)]
    pub(crate) fn root(&self) -> &Path {
        &self.prefix
    }

    /// The key of `path`; for the root, the prefix itself.
    pub(crate) fn key(&self, path: &VPath) -> Result<Path, FsError> {
        if path.is_root() {
            return Ok(self.prefix.clone());
        }
        let relative = std::str::from_utf8(path.relative()).map_err(|_| {
            FsError::InvalidInput("object storage names must be valid UTF-8".into())
        })?;
        if path.components().any(|c| c == DIR_MARKER.as_bytes()) {
            return Err(FsError::Forbidden(
                format!("the name {DIR_MARKER} is reserved for directory markers").into(),
            ));
        }
        let joined = if self.prefix.as_ref().is_empty() {
            relative.to_owned()
        } else {
            format!("{}/{relative}", self.prefix.as_ref())
        };
        let key = Path::parse(&joined).map_err(|_| {
            FsError::InvalidInput("a name holds a character object storage refuses".into())
        })?;
        self.check(&key)?;
        Ok(key)
    }

    /// The key of the marker object of directory `path`.
    pub(crate) fn marker(&self, path: &VPath) -> Result<Path, FsError> {
        Ok(marker_of(&self.key(path)?))
    }

    /// `key` moved from below `from` to the same place below `to` (a directory rename),
    /// byte for byte; `None` if `key` is not below `from`.
    pub(crate) fn moved(&self, key: &Path, from: &Path, to: &Path) -> Option<Path> {
        let rest = key
            .as_ref()
            .strip_prefix(from.as_ref())?
            .strip_prefix('/')?;
        let moved = Path::parse(format!("{}/{rest}", to.as_ref())).ok()?;
        self.check(&moved).ok()?;
        Some(moved)
    }

    /// The name of `key` relative to the directory key `dir`, if `key` is a direct child of
    /// it; `None` for anything else (including the marker).
    pub(crate) fn child_name<'a>(&self, dir: &Path, key: &'a Path) -> Option<&'a str> {
        let mut rest = key.prefix_match(dir)?;
        let first = rest.next()?;
        if rest.next().is_some() {
            return None;
        }
        let name = key.filename()?;
        (first.as_ref() == name && name != DIR_MARKER).then_some(name)
    }

    /// The jail: a key must lie strictly below the prefix (or be the prefix, for the root).
    fn check(&self, key: &Path) -> Result<(), FsError> {
        let below = key
            .prefix_match(&self.prefix)
            .is_some_and(|mut rest| rest.next().is_some());
        if below {
            Ok(())
        } else {
            Err(FsError::OutsideRoot)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(prefix: &str, path: &[u8], expected: &str) {
        let map = KeyMap::new(prefix).unwrap();
        let key = map.key(&VPath::parse(path).unwrap()).unwrap();
        assert_eq!(key.as_ref(), expected, "{prefix:?} + {path:?}");
    }

    fn refused(prefix: &str, path: &[u8]) -> FsError {
        let map = KeyMap::new(prefix).unwrap();
        map.key(&VPath::parse(path).unwrap()).unwrap_err()
    }

    #[test]
    fn under_prefix() {
        check("users/alice", b"/docs/a.txt", "users/alice/docs/a.txt");
    }
    #[test]
    fn prefix_slashes_ignored() {
        check("/users/alice/", b"/a", "users/alice/a");
    }
    #[test]
    fn empty_prefix_is_the_bucket() {
        check("", b"/a/b", "a/b");
    }
    #[test]
    fn root_is_prefix() {
        check("p", b"/", "p");
    }
    #[test]
    fn names_byte_exact() {
        // Path::from would percent-encode these; Path::parse keeps them.
        check("p", "/a b%20c+ü#?".as_bytes(), "p/a b%20c+ü#?");
    }
    #[test]
    fn dotdot_cannot_leave() {
        check("p/q", b"/../../x", "p/q/x");
    }
    #[test]
    fn non_utf8_refused() {
        assert!(matches!(refused("p", b"/a\xff"), FsError::InvalidInput(_)));
    }
    #[test]
    fn control_character_refused() {
        assert!(matches!(refused("p", b"/a\x01b"), FsError::InvalidInput(_)));
    }
    #[test]
    fn marker_name_refused() {
        assert!(matches!(
            refused("p", b"/d/.sftpgate-dir"),
            FsError::Forbidden(_)
        ));
        assert!(matches!(
            refused("p", b"/.sftpgate-dir/x"),
            FsError::Forbidden(_)
        ));
    }
    #[test]
    fn marker_key() {
        let map = KeyMap::new("p").unwrap();
        let marker = map.marker(&VPath::parse(b"/d").unwrap()).unwrap();
        assert_eq!(marker.as_ref(), "p/d/.sftpgate-dir");
    }
    #[test]
    fn moved_keys_byte_exact() {
        let map = KeyMap::new("p").unwrap();
        let key = |k: &str| Path::parse(k).unwrap();
        let moved = map
            .moved(&key("p/a/x %41#/y"), &key("p/a"), &key("p/b"))
            .unwrap();
        assert_eq!(moved.as_ref(), "p/b/x %41#/y");
        assert!(map
            .moved(&key("p/ab/x"), &key("p/a"), &key("p/b"))
            .is_none());
    }
    #[test]
    fn child_names() {
        let map = KeyMap::new("p").unwrap();
        let dir = Path::parse("p/d").unwrap();
        let name = |k: &str| {
            map.child_name(&dir, &Path::parse(k).unwrap())
                .map(str::to_owned)
        };
        assert_eq!(name("p/d/x"), Some("x".into()));
        assert_eq!(name("p/d/x/y"), None);
        assert_eq!(name("p/d/.sftpgate-dir"), None);
        assert_eq!(name("p/dx/y"), None);
        assert_eq!(name("p/d"), None);
    }
    #[test]
    fn jail_check_refuses_outside_keys() {
        let map = KeyMap::new("p/q").unwrap();
        for outside in ["p", "p/qq/x", "x/p/q/y", "p/q"] {
            let key = Path::parse(outside).unwrap();
            assert!(
                matches!(map.check(&key), Err(FsError::OutsideRoot)),
                "{outside} passed"
            );
        }
        assert!(map.check(&Path::parse("p/q/x").unwrap()).is_ok());
    }

    proptest! {
        /// Whatever bytes a client sends, a key that comes out lies strictly below the
        /// prefix, and its parts after the prefix are the path's components, byte for byte.
        #[test]
        fn keys_stay_in_the_jail(
            input in proptest::collection::vec(
                prop_oneof![Just(b'/'), Just(b'.'), Just(b'a'), Just(b'%'), any::<u8>()],
                0..40,
            )
        ) {
            let map = KeyMap::new("tenant/one").unwrap();
            let Ok(path) = VPath::parse(&input) else { return Ok(()); };
            if let Ok(key) = map.key(&path) {
                let rest: Vec<String> = key
                    .prefix_match(map.root())
                    .expect("key below the prefix")
                    .map(|p| p.as_ref().to_owned())
                    .collect();
                prop_assert_eq!(rest.is_empty(), path.is_root());
                let components: Vec<&[u8]> = path.components().collect();
                prop_assert_eq!(rest.len(), components.len());
                for (part, component) in rest.iter().zip(components) {
                    prop_assert_eq!(part.as_bytes(), component);
                }
            }
        }
    }
}
