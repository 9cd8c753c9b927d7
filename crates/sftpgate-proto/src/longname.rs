//! The `ls -l` style longname that OpenSSH clients print from NAME replies, formatted exactly
//! as OpenSSH's `ls_file()` does (sftp-common.c).

use crate::attrs::{FileAttributes, FileType};

/// What a longname needs beyond the attributes.
#[derive(Debug, Clone, Copy)]
pub struct LongnameInfo<'a> {
    /// The owner's name; `None` prints the numeric uid.
    pub user: Option<&'a str>,
    /// The group's name; `None` prints the numeric gid.
    pub group: Option<&'a str>,
    /// Number of hard links.
    pub nlink: u64,
    /// The current time in seconds since the Unix epoch: files modified within the last six
    /// months show a time of day, older ones a year. Passed in, as this crate has no clock.
    pub now: u64,
}

/// Formats `name` as `ls -l` does: `-rw-r--r--    1 alice    staff        1234 Jan  5 12:00 name`.
/// Dates are in UTC (the protocol core knows no time zone).
pub fn longname(name: &[u8], attrs: &FileAttributes, info: &LongnameInfo<'_>) -> Vec<u8> {
    use std::fmt::Write as _;

    let mode = attrs.permissions.unwrap_or(0);
    let mut line = String::with_capacity(64 + name.len());
    push_mode(&mut line, mode);
    let uid;
    let gid;
    let (user, group) = match (info.user, info.group) {
        (Some(u), Some(g)) => (u, g),
        (u, g) => {
            let owner = attrs.owner.unwrap_or(crate::Owner { uid: 0, gid: 0 });
            uid = owner.uid.to_string();
            gid = owner.gid.to_string();
            (u.unwrap_or(&uid), g.unwrap_or(&gid))
        }
    };
    let size = attrs.size.unwrap_or(0);
    let _ = write!(
        line,
        " {:>3} {:<8} {:<8} {:>8} ",
        info.nlink, user, group, size
    );
    match attrs.times {
        Some(times) if times.mtime != 0 => push_date(&mut line, u64::from(times.mtime), info.now),
        _ => line.push_str("            "),
    }
    line.push(' ');
    let mut out = line.into_bytes();
    out.extend_from_slice(name);
    out
}

/// `strmode()`: type character, nine permission characters with setuid/setgid/sticky folded
/// in, and the trailing space that BSD's strmode appends.
fn push_mode(line: &mut String, mode: u32) {
    line.push(match FileType::from_mode(mode) {
        FileType::Regular => '-',
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
        FileType::Unknown => '?',
    });
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let special = |exec: u32, special: u32, set: char, unset: char| match (
        mode & exec != 0,
        mode & special != 0,
    ) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    line.push(bit(0o400, 'r'));
    line.push(bit(0o200, 'w'));
    line.push(special(0o100, 0o4000, 's', 'S'));
    line.push(bit(0o040, 'r'));
    line.push(bit(0o020, 'w'));
    line.push(special(0o010, 0o2000, 's', 'S'));
    line.push(bit(0o004, 'r'));
    line.push(bit(0o002, 'w'));
    line.push(special(0o001, 0o1000, 't', 'T'));
    line.push(' ');
}

/// `%b %e %H:%M` within the last six months, else `%b %e  %Y`, as OpenSSH.
fn push_date(line: &mut String, mtime: u64, now: u64) {
    use std::fmt::Write as _;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = civil_from_days((mtime / 86_400) as i64);
    let month = MONTHS[(month - 1) as usize];
    let recent = now.saturating_sub(365 * 24 * 60 * 60 / 2) < mtime && now >= mtime;
    if recent {
        let secs = mtime % 86_400;
        let _ = write!(
            line,
            "{month} {day:>2} {:02}:{:02}",
            secs / 3600,
            secs / 60 % 60
        );
    } else {
        let _ = write!(line, "{month} {day:>2}  {year}");
    }
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Owner, Times};

    fn check(mode: u32, mtime: u32, now: u64, expected: &str) {
        let attrs = FileAttributes {
            size: Some(1234),
            owner: Some(Owner {
                uid: 1000,
                gid: 100,
            }),
            permissions: Some(mode),
            times: Some(Times { atime: 0, mtime }),
            extended: vec![],
        };
        let info = LongnameInfo {
            user: Some("alice"),
            group: None,
            nlink: 1,
            now,
        };
        assert_eq!(
            String::from_utf8(longname(b"file.txt", &attrs, &info)).unwrap(),
            expected
        );
    }

    // 2024-01-05 12:00:00 UTC
    const JAN5: u32 = 1_704_456_000;

    #[test]
    fn recent_file_shows_time() {
        check(
            0o100644,
            JAN5,
            u64::from(JAN5) + 3600,
            "-rw-r--r--    1 alice    100          1234 Jan  5 12:00 file.txt",
        );
    }

    #[test]
    fn old_file_shows_year() {
        check(
            0o100600,
            JAN5,
            u64::from(JAN5) + 200 * 86_400,
            "-rw-------    1 alice    100          1234 Jan  5  2024 file.txt",
        );
    }

    #[test]
    fn future_file_shows_year() {
        check(
            0o040755,
            JAN5,
            u64::from(JAN5) - 10,
            "drwxr-xr-x    1 alice    100          1234 Jan  5  2024 file.txt",
        );
    }

    #[test]
    fn special_bits() {
        check(
            0o104755 | 0o2000 | 0o1000,
            JAN5,
            u64::from(JAN5),
            "-rwsr-sr-t    1 alice    100          1234 Jan  5 12:00 file.txt",
        );
        check(
            0o120000 | 0o4000 | 0o2000 | 0o1000,
            JAN5,
            u64::from(JAN5),
            "l--S--S--T    1 alice    100          1234 Jan  5 12:00 file.txt",
        );
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_727), (2024, 1, 5));
    }
}
