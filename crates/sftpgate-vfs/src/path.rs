//! Virtual paths: what a client's path means inside a session, before any backend sees it.

use std::fmt;

/// An absolute, normalised path in a session's virtual filesystem.
///
/// Invariants, upheld by every constructor: it starts with `/`; it has no empty, `.` or `..`
/// components and no trailing `/` (except the root itself); it contains no NUL byte. Names
/// are bytes, exactly as the client sent them.
///
/// `..` is resolved lexically, as Go's `path.Clean` and SFTPGo do, and stops at the root the
/// way `..` stops at `/` in a chroot. A backend therefore never sees a `..` from a client;
/// symlinks are the backend's to resolve, inside its own jail. Permission checks by path
/// prefix (which need one spelling per path) are made on these.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VPath(Vec<u8>);

/// Why a client's path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path holds a NUL byte, which no filesystem name can.
    #[error("path contains a NUL byte")]
    Nul,
    /// A single file name was expected.
    #[error("not a single file name")]
    NotAName,
}

impl VPath {
    /// The root, `/`.
    pub fn root() -> VPath {
        VPath(b"/".to_vec())
    }

    /// Resolves a client's path against `base` (the session's working directory): absolute
    /// paths ignore `base`, an empty path is `base` itself, `.` components vanish and `..`
    /// removes the previous component (never going above the root).
    pub fn resolve(base: &VPath, input: &[u8]) -> Result<VPath, PathError> {
        if input.contains(&0) {
            return Err(PathError::Nul);
        }
        let mut out = if input.first() == Some(&b'/') {
            Vec::with_capacity(input.len())
        } else {
            let mut v = Vec::with_capacity(base.0.len() + 1 + input.len());
            if !base.is_root() {
                v.extend_from_slice(&base.0);
            }
            v
        };
        for component in input.split(|b| *b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => {
                    let cut = out.iter().rposition(|b| *b == b'/').unwrap_or(0);
                    out.truncate(cut);
                }
                name => {
                    out.push(b'/');
                    out.extend_from_slice(name);
                }
            }
        }
        if out.is_empty() {
            out.push(b'/');
        }
        Ok(VPath(out))
    }

    /// Parses an absolute path the way [`VPath::resolve`] does from the root.
    pub fn parse(input: &[u8]) -> Result<VPath, PathError> {
        Self::resolve(&Self::root(), input)
    }

    /// The path's bytes, starting with `/`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path without its leading `/`: empty for the root, else `a/b/c`. What a backend
    /// joins onto its own root.
    pub fn relative(&self) -> &[u8] {
        &self.0[1..]
    }

    /// Whether this is `/`.
    pub fn is_root(&self) -> bool {
        self.0.len() == 1
    }

    /// The names from the root down.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &[u8]> {
        self.relative()
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
    }

    /// The last component; `None` for the root.
    pub fn file_name(&self) -> Option<&[u8]> {
        if self.is_root() {
            return None;
        }
        self.components().next_back()
    }

    /// The parent directory; `None` for the root.
    pub fn parent(&self) -> Option<VPath> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.iter().rposition(|b| *b == b'/').unwrap_or(0);
        Some(if cut == 0 {
            VPath::root()
        } else {
            VPath(self.0[..cut].to_vec())
        })
    }

    /// This path with one more component.
    pub fn join_name(&self, name: &[u8]) -> Result<VPath, PathError> {
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(PathError::NotAName);
        }
        if name.contains(&0) {
            return Err(PathError::Nul);
        }
        let mut v = self.0.clone();
        if !self.is_root() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        Ok(VPath(v))
    }

    /// Whether `prefix` is this path or one of its ancestors (component-wise: `/ab` does not
    /// start with `/a`).
    pub fn starts_with(&self, prefix: &VPath) -> bool {
        prefix.is_root()
            || (self.0.starts_with(&prefix.0)
                && (self.0.len() == prefix.0.len() || self.0[prefix.0.len()] == b'/'))
    }
}

impl fmt::Debug for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VPath({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(base: &str, input: &str, expected: &str) {
        let base = VPath::parse(base.as_bytes()).unwrap();
        let got = VPath::resolve(&base, input.as_bytes()).unwrap();
        assert_eq!(got.as_bytes(), expected.as_bytes(), "{base} + {input:?}");
    }

    #[test]
    fn absolute() {
        check("/home", "/a/b", "/a/b");
    }
    #[test]
    fn relative() {
        check("/home", "a/b", "/home/a/b");
    }
    #[test]
    fn relative_from_root() {
        check("/", "a", "/a");
    }
    #[test]
    fn empty_is_base() {
        check("/home", "", "/home");
    }
    #[test]
    fn dot() {
        check("/home", "./a/./b/.", "/home/a/b");
    }
    #[test]
    fn dotdot() {
        check("/home", "a/../b", "/home/b");
    }
    #[test]
    fn dotdot_stops_at_root() {
        check("/home", "../../../../etc/passwd", "/etc/passwd");
    }
    #[test]
    fn dotdot_to_root() {
        check("/a", "..", "/");
    }
    #[test]
    fn repeated_slashes() {
        check("/", "//a///b//", "/a/b");
    }
    #[test]
    fn non_utf8_kept() {
        let p = VPath::parse(b"/a\xff\xfe").unwrap();
        assert_eq!(p.as_bytes(), b"/a\xff\xfe");
    }
    #[test]
    fn nul_refused() {
        assert_eq!(VPath::parse(b"/a\0b"), Err(PathError::Nul));
    }
    #[test]
    fn parent_and_name() {
        let p = VPath::parse(b"/a/b").unwrap();
        assert_eq!(p.file_name(), Some(&b"b"[..]));
        assert_eq!(p.parent().unwrap().as_bytes(), b"/a");
        assert_eq!(p.parent().unwrap().parent().unwrap(), VPath::root());
        assert_eq!(VPath::root().parent(), None);
        assert_eq!(VPath::root().file_name(), None);
    }
    #[test]
    fn starts_with_is_component_wise() {
        let p = VPath::parse(b"/ab/c").unwrap();
        assert!(p.starts_with(&VPath::parse(b"/ab").unwrap()));
        assert!(p.starts_with(&VPath::root()));
        assert!(p.starts_with(&p));
        assert!(!p.starts_with(&VPath::parse(b"/a").unwrap()));
    }
    #[test]
    fn join_name_refuses_paths() {
        let root = VPath::root();
        assert_eq!(root.join_name(b"x").unwrap().as_bytes(), b"/x");
        assert_eq!(root.join_name(b"a/b"), Err(PathError::NotAName));
        assert_eq!(root.join_name(b".."), Err(PathError::NotAName));
    }

    proptest! {
        #[test]
        fn resolve_upholds_invariants(base in "(/[a-z.]{0,3}){0,4}", input in proptest::collection::vec(prop_oneof![Just(b'/'), Just(b'.'), Just(b'a'), any::<u8>()], 0..40)) {
            let base = VPath::parse(base.as_bytes()).unwrap();
            match VPath::resolve(&base, &input) {
                Ok(p) => {
                    let b = p.as_bytes();
                    prop_assert_eq!(b[0], b'/');
                    prop_assert!(!b.contains(&0));
                    prop_assert!(p.is_root() || !b.ends_with(b"/"));
                    for c in b[1..].split(|x| *x == b'/') {
                        prop_assert!(p.is_root() || (!c.is_empty() && c != b"." && c != b".."));
                    }
                    // Normalising again changes nothing.
                    prop_assert_eq!(VPath::parse(b).unwrap(), p);
                }
                Err(e) => {
                    prop_assert_eq!(e, PathError::Nul);
                    prop_assert!(input.contains(&0));
                }
            }
        }
    }
}
