//! `sftpgate check-config [FILE]`: checks a configuration file without starting anything
//! and prints every problem with its line and column: TOML syntax, unknown keys, values of
//! the wrong type, bad durations, rules between settings, files it names that do not exist.
//!
//! Deserializing the whole file stops at the first error, so each setting is checked on its
//! own: a [`Config`] is deserialized from the defaults plus that one setting, and an error
//! is reported at that setting's position (from `toml`'s spanned document). Rules between
//! settings ([`Config::validate`] and the NATS timeout rules `serve` applies) run once every
//! setting is valid on its own. Only the file is checked: `SFTPGATE_*` variables and flags
//! are not applied.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The file to check [default: ./sftpgate.toml]
    file: Option<PathBuf>,
}

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column; `None` when no position applies.
    pub position: Option<(usize, usize)>,
    /// The dotted key, when the problem belongs to one.
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((line, column)) = self.position {
            write!(f, "{line}:{column}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Runs the command: exit status 0 when the file is valid, 1 when it has problems or cannot
/// be read.
pub fn run(args: &CheckConfigArgs) -> ExitCode {
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from("sftpgate.toml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{}: cannot read the file: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let problems = check(&text);
    if problems.is_empty() {
        println!("{}: valid", path.display());
        return ExitCode::SUCCESS;
    }
    for problem in &problems {
        eprintln!("{}:{problem}", path.display());
    }
    eprintln!(
        "{}: {} problem{}",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    ExitCode::FAILURE
}

/// Every problem of the configuration file `text` (relative paths it names are taken from
/// the current directory, as `serve` does).
pub fn check(text: &str) -> Vec<Problem> {
    let lines = LineIndex::new(text);
    let (document, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return syntax
            .iter()
            .map(|e| Problem {
                position: e.span().map(|s| lines.position(s.start)),
                key: None,
                message: e.message().trim().to_owned(),
            })
            .collect();
    }
    let Ok(table) = text.parse::<toml::Table>() else {
        // The spanned parse accepted it; this one agrees in practice.
        return vec![Problem {
            position: None,
            key: None,
            message: "the file is not valid TOML".into(),
        }];
    };

    let mut settings = Vec::new();
    collect(document.get_ref(), "", &mut settings);
    let mut problems = Vec::new();
    for (key, span) in &settings {
        let Some(value) = lookup(&table, key) else {
            continue;
        };
        let mut alone = toml::Table::new();
        insert(&mut alone, key, value.clone());
        if let Err(e) = toml::Value::Table(alone).try_into::<Config>() {
            problems.push(Problem {
                position: Some(lines.position(span.start)),
                key: Some(key.clone()),
                message: e.message().trim().to_owned(),
            });
        }
    }
    if !problems.is_empty() {
        // In the file's order (the document's tables are walked in key order).
        problems.sort_by_key(|p| p.position);
        return problems;
    }

    let config: Config = match toml::Value::Table(table).try_into() {
        Ok(config) => config,
        Err(e) => {
            return vec![Problem {
                position: e.span().map(|s| lines.position(s.start)),
                key: None,
                message: e.message().trim().to_owned(),
            }]
        }
    };
    // Rules between settings: reported at the first setting their message names.
    let at = |message: String| {
        let key = settings
            .iter()
            .filter(|(key, _)| message.contains(key.as_str()))
            .max_by_key(|(key, _)| key.len());
        Problem {
            position: key.map(|(_, span)| lines.position(span.start)),
            key: key.map(|(key, _)| key.clone()),
            message,
        }
    };
    if let Err(e) = config.validate() {
        problems.push(at(format!("{e:#}")));
    }
    if let Err(e) = crate::serve::check_nats_timeouts(&config) {
        problems.push(at(format!("{e:#}")));
    }
    // What `serve` would refuse at start (only literal addresses: names need a lookup).
    if let Ok(addr) = config.metrics.listen.parse::<std::net::SocketAddr>() {
        if !addr.ip().is_loopback() && !config.metrics.allow_public {
            problems.push(at(format!(
                "metrics.listen {addr} is not a loopback address; set metrics.allow_public = \
                 true to serve the unauthenticated endpoints there"
            )));
        }
    }
    for (key, file) in files(&config) {
        if let Err(e) = std::fs::metadata(&file) {
            let span = settings.iter().find(|(k, _)| *k == key).map(|(_, s)| s);
            problems.push(Problem {
                position: span.map(|s| lines.position(s.start)),
                key: Some(key.to_owned()),
                message: format!("{}: {e}", file.display()),
            });
        }
    }
    problems
}

/// Files the configuration names that must exist before `serve` starts (the data directory,
/// host key and outbox are created). A SQLite URL's directory must exist; the file is
/// created.
fn files(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut files = Vec::new();
    if let Some(path) = &config.nats.credentials_file {
        files.push(("nats.credentials_file", path.clone()));
    }
    if let Some(rest) = config.database_url.strip_prefix("sqlite://") {
        let file = Path::new(rest.split('?').next().unwrap_or(rest));
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            files.push(("database_url", dir.to_path_buf()));
        }
    }
    files
}

/// Every setting of the document as (dotted key, span of its key). Arrays and empty tables
/// are settings of their own; other tables are walked.
fn collect(table: &toml::de::DeTable<'_>, prefix: &str, out: &mut Vec<(String, Range<usize>)>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        match value.get_ref() {
            toml::de::DeValue::Table(child) if !child.is_empty() => collect(child, &path, out),
            _ => out.push((path, key.span())),
        }
    }
}

fn lookup<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    let (head, rest) = match key.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (key, None),
    };
    let value = table.get(head)?;
    match (rest, value) {
        (None, value) => Some(value),
        (Some(rest), toml::Value::Table(child)) => lookup(child, rest),
        (Some(_), _) => None,
    }
}

fn insert(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let child = table
                .entry(head.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(child) = child {
                insert(child, rest, value);
            }
        }
    }
}

/// Byte offsets to 1-based lines and columns (columns in characters).
struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset.min(self.text.len()))
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Vec<String> {
        check(text).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn valid_file_has_no_problems() {
        let text = "listen = \"127.0.0.1:2022\"\n[timeouts]\nexit = \"5s\"\n[metrics]\nlisten = \"127.0.0.1:9100\"\n";
        assert_eq!(check_text(text), Vec::<String>::new());
    }

    #[test]
    fn the_default_configuration_is_valid() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(check_text(&text), Vec::<String>::new());
    }

    #[test]
    fn every_problem_with_its_position() {
        let text = "\
listen = \"127.0.0.1:2022\"
lisen = \"x\"
[timeouts]
exit = \"soon\"
sftp_factory = 5
[limits]
max_handles = -1
[nats]
bogus = true
";
        // The lists of expected keys are left out: they grow with the configuration.
        let problems: Vec<String> = check_text(text)
            .iter()
            .map(|p| p.split(", expected one of").next().unwrap().to_owned())
            .collect();
        assert_eq!(
            problems,
            [
                "2:1: lisen: unknown field `lisen`",
                "4:1: timeouts.exit: invalid value: string \"soon\", expected a duration",
                "5:1: timeouts.sftp_factory: invalid type: integer `5`, expected a duration",
                "7:1: limits.max_handles: invalid value: integer `-1`, expected usize",
                "9:1: nats.bogus: unknown field `bogus`",
            ]
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let problems = check_text("listen = \"a\"\n[timeouts\nexit = 1\n");
        assert!(!problems.is_empty());
        assert!(problems[0].starts_with("2:"), "{problems:?}");
    }

    #[test]
    fn rules_between_settings_point_at_a_setting() {
        let problems = check_text("[limits]\nmax_in_flight = 0\n");
        assert_eq!(
            problems,
            ["2:1: limits.max_in_flight: limits.max_in_flight must be at least 1"]
        );
    }

    #[test]
    fn missing_files_are_reported() {
        let problems = check_text(
            "[nats]\nenabled = true\ncredentials_file = \"/nonexistent/sftpgate.creds\"\n",
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("3:1: nats.credentials_file: /nonexistent/sftpgate.creds: "),
            "{problems:?}"
        );
    }

    #[test]
    fn a_public_metrics_address_needs_allow_public() {
        let problems = check_text("[metrics]\nlisten = \"0.0.0.0:9100\"\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("2:1: metrics.listen: metrics.listen 0.0.0.0:9100 is not"),
            "{problems:?}"
        );
        let allowed = "[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_public = true\n";
        assert_eq!(check_text(allowed), Vec::<String>::new());
    }

    #[test]
    fn columns_count_characters() {
        let lines = LineIndex::new("a = \"é\"\n  b = 1\n");
        assert_eq!(lines.position(0), (1, 1));
        assert_eq!(lines.position(11), (2, 3));
    }
}
