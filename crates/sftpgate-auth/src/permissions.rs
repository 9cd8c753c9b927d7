//! Permissions: the flags ([`Permissions`]), one rule per virtual path prefix
//! ([`PermissionRule`]) and a user's rules as the server consults them ([`PermissionTable`]:
//! longest matching prefix wins).

use std::fmt;
use std::str::FromStr;

use sftpgate_vfs::VPath;

use crate::error::StoreError;

bitflags::bitflags! {
    /// What a user may do under a path prefix. The names (as [`Permissions::from_str`] reads
    /// them and `Display` writes them) are stored in the database and never change.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Permissions: u16 {
        /// List directories (OPENDIR/READDIR) and see attributes (STAT).
        const LIST = 1 << 0;
        /// Read file contents.
        const DOWNLOAD = 1 << 1;
        /// Create new files.
        const UPLOAD = 1 << 2;
        /// Write to, truncate or append to existing files.
        const OVERWRITE = 1 << 3;
        /// Remove files and directories.
        const DELETE = 1 << 4;
        /// Rename or move files and directories.
        const RENAME = 1 << 5;
        /// Create directories.
        const MKDIR = 1 << 6;
        /// Create symbolic and hard links.
        const SYMLINK = 1 << 7;
        /// Change attributes: permissions, owner, times, size (SETSTAT).
        const CHATTR = 1 << 8;
    }
}

/// Every flag with its stored name, in display order.
const NAMES: &[(Permissions, &str)] = &[
    (Permissions::LIST, "list"),
    (Permissions::DOWNLOAD, "download"),
    (Permissions::UPLOAD, "upload"),
    (Permissions::OVERWRITE, "overwrite"),
    (Permissions::DELETE, "delete"),
    (Permissions::RENAME, "rename"),
    (Permissions::MKDIR, "mkdir"),
    (Permissions::SYMLINK, "symlink"),
    (Permissions::CHATTR, "chattr"),
];

/// The known names, for error messages.
const KNOWN: &str = "list, download, upload, overwrite, delete, rename, mkdir, symlink, chattr";

impl Permissions {
    /// The name of a single flag (`"upload"`); `"?"` for a combination.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(flag, _)| *flag == self)
            .map_or("?", |(_, name)| name)
    }
}

impl FromStr for Permissions {
    type Err = StoreError;

    /// Comma- or space-separated names: `"list,download"`, `"all"`, `"none"` (or empty).
    /// Case-insensitive; an unknown name is an error.
    fn from_str(text: &str) -> Result<Permissions, StoreError> {
        let mut out = Permissions::empty();
        for word in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
        {
            let word = word.to_ascii_lowercase();
            out |= match word.as_str() {
                "all" | "*" => Permissions::all(),
                "none" => Permissions::empty(),
                _ => NAMES
                    .iter()
                    .find(|(_, name)| *name == word)
                    .map(|(flag, _)| *flag)
                    .ok_or(StoreError::UnknownPermission {
                        name: word,
                        known: KNOWN,
                    })?,
            };
        }
        Ok(out)
    }
}

impl fmt::Display for Permissions {
    /// `list,download`; `none` for the empty set. Always the stored spelling (no `all`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// What a user may do under one virtual path prefix (the prefix itself and everything below
/// it, component-wise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRule {
    /// The normalised prefix (`/`, `/in`, `/a/b`).
    pub prefix: VPath,
    /// The flags granted.
    pub permissions: Permissions,
}

/// Normalises a prefix as typed by a person: must start with `/` (relative prefixes would
/// be ambiguous); `.`/`..`/`//` are resolved as for client paths; must be UTF-8 text.
pub fn normalize_prefix(prefix: &str) -> Result<VPath, StoreError> {
    let invalid = |reason| StoreError::InvalidPrefix {
        prefix: prefix.to_owned(),
        reason,
    };
    if !prefix.starts_with('/') {
        return Err(invalid("must be an absolute virtual path, starting with /"));
    }
    VPath::parse(prefix.as_bytes()).map_err(|_| invalid("contains a NUL byte"))
}

/// A user's rules, as read at the start of a session: the rule with the longest prefix
/// matching a path decides everything on that path.
///
/// A user **without any rule** has every permission everywhere in their root: that is the
/// first-run case (a store created by `sftpgate serve` has a user and no rules), and adding
/// the first rule is what restricts a user. Once a user has rules, a path no rule matches
/// allows nothing; add a rule for `/` to set the default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PermissionTable {
    /// Sorted by prefix length, longest first.
    rules: Vec<PermissionRule>,
}

impl PermissionTable {
    /// A table of `rules` (in any order; a later duplicate prefix replaces an earlier one).
    pub fn new(rules: impl IntoIterator<Item = PermissionRule>) -> PermissionTable {
        let mut sorted: Vec<PermissionRule> = Vec::new();
        for rule in rules {
            sorted.retain(|r| r.prefix != rule.prefix);
            sorted.push(rule);
        }
        sorted.sort_by(|a, b| {
            b.prefix
                .as_bytes()
                .len()
                .cmp(&a.prefix.as_bytes().len())
                .then_with(|| a.prefix.cmp(&b.prefix))
        });
        PermissionTable { rules: sorted }
    }

    /// The table that allows everything (a user without rules).
    pub fn unrestricted() -> PermissionTable {
        PermissionTable::default()
    }

    /// The rules, longest prefix first.
    pub fn rules(&self) -> &[PermissionRule] {
        &self.rules
    }

    /// Whether the table has no rules (and so allows everything).
    pub fn is_unrestricted(&self) -> bool {
        self.rules.is_empty()
    }

    /// What is allowed on `path`: the flags of the longest matching prefix; everything if
    /// there are no rules; nothing if rules exist and none matches.
    pub fn for_path(&self, path: &VPath) -> Permissions {
        if self.rules.is_empty() {
            return Permissions::all();
        }
        self.rules
            .iter()
            .find(|rule| path.starts_with(&rule.prefix))
            .map_or(Permissions::empty(), |rule| rule.permissions)
    }

    /// Whether some rule's prefix lies strictly below `path`: moving `path` would move
    /// entries out from under their own rule.
    pub fn has_rules_below(&self, path: &VPath) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.prefix != *path && rule.prefix.starts_with(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str) -> VPath {
        VPath::parse(path.as_bytes()).unwrap()
    }

    fn rule(prefix: &str, perms: &str) -> PermissionRule {
        PermissionRule {
            prefix: p(prefix),
            permissions: perms.parse().unwrap(),
        }
    }

    fn check(table: &PermissionTable, path: &str, expected: &str) {
        assert_eq!(table.for_path(&p(path)).to_string(), expected, "{path}");
    }

    #[test]
    fn no_rules_allows_everything() {
        let table = PermissionTable::unrestricted();
        assert!(table.is_unrestricted());
        check(&table, "/any/where", &Permissions::all().to_string());
    }

    #[test]
    fn longest_prefix_wins() {
        let table = PermissionTable::new([
            rule("/", "list"),
            rule("/in", "list,upload"),
            rule("/in/private", "none"),
        ]);
        check(&table, "/", "list");
        check(&table, "/other/file", "list");
        check(&table, "/in", "list,upload");
        check(&table, "/in/x", "list,upload");
        check(&table, "/in/private", "none");
        check(&table, "/in/private/deep/file", "none");
        check(&table, "/in/privateer", "list,upload");
    }

    #[test]
    fn unmatched_path_gets_nothing_once_rules_exist() {
        let table = PermissionTable::new([rule("/pub", "all")]);
        check(&table, "/pub/a", &Permissions::all().to_string());
        check(&table, "/", "none");
        check(&table, "/secret", "none");
    }

    #[test]
    fn later_duplicate_replaces() {
        let table = PermissionTable::new([rule("/a", "list"), rule("/a", "download")]);
        assert_eq!(table.rules().len(), 1);
        check(&table, "/a", "download");
    }

    #[test]
    fn rules_below() {
        let table = PermissionTable::new([rule("/a/b", "list")]);
        assert!(table.has_rules_below(&p("/a")));
        assert!(table.has_rules_below(&p("/")));
        assert!(!table.has_rules_below(&p("/a/b")));
        assert!(!table.has_rules_below(&p("/a/bc")));
    }

    #[test]
    fn names_round_trip() {
        let all: Permissions = "all".parse().unwrap();
        assert_eq!(all, Permissions::all());
        assert_eq!(
            all.to_string(),
            "list,download,upload,overwrite,delete,rename,mkdir,symlink,chattr"
        );
        assert_eq!(all.to_string().parse::<Permissions>().unwrap(), all);
        assert_eq!("".parse::<Permissions>().unwrap(), Permissions::empty());
        assert_eq!(Permissions::empty().to_string(), "none");
        assert_eq!(
            "Download, LIST upload".parse::<Permissions>().unwrap(),
            Permissions::LIST | Permissions::DOWNLOAD | Permissions::UPLOAD
        );
        assert_eq!(Permissions::UPLOAD.name(), "upload");
    }

    #[test]
    fn unknown_name_is_an_error() {
        let err = "list,fly".parse::<Permissions>().unwrap_err();
        assert!(err.to_string().contains("\"fly\""), "{err}");
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix("/a//b/./c/..").unwrap(), p("/a/b"));
        assert_eq!(normalize_prefix("/").unwrap(), VPath::root());
        assert!(normalize_prefix("relative").is_err());
        assert!(normalize_prefix("").is_err());
        assert!(normalize_prefix("/a\0b").is_err());
    }
}
