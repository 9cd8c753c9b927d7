//! Operating the server: `/metrics` scraped during a real OpenSSH session, `/health` with the
//! store up and with NATS configured but down, JSON logs with the session-end line, and
//! `sftpgate check-config`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Fixture, Interactive, Server, USER};

/// Bytes of the file the session uploads and downloads: several WRITE and READ requests.
const FILE_SIZE: usize = 3 << 20;

#[test]
fn metrics_move_during_a_transfer() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    fixture.add_user(USER);
    let server = start_with_metrics(&fixture, &[]);
    let metrics = metrics_addr(&server);

    let before = scrape(metrics);
    assert_eq!(value(&before, "sftpgate_sftp_sessions_open", &[]), 0.0);
    assert_eq!(value(&before, "sftpgate_bytes_in_total", &[]), 0.0);

    std::fs::write(fixture.local().join("up.bin"), pattern(FILE_SIZE)).unwrap();
    let mut sftp = Interactive::start(&fixture, &server, USER);
    sftp.send("put up.bin").unwrap();
    sftp.send("-rm does-not-exist").unwrap();
    sftp.send("!echo upload-done").unwrap();
    assert!(
        sftp.wait_for(true, "upload-done", Duration::from_secs(60)),
        "upload did not finish\nstdout: {}\nstderr: {}",
        sftp.stdout(),
        sftp.stderr()
    );

    // The session is still open: gauges show it, counters have moved.
    let during = wait_metrics(metrics, |m| {
        value(m, "sftpgate_bytes_in_total", &[]) >= FILE_SIZE as f64
    });
    assert_eq!(value(&during, "sftpgate_sftp_sessions_open", &[]), 1.0);
    assert_eq!(value(&during, "sftpgate_connections_open", &[]), 1.0);
    assert_eq!(
        value(&during, "sftpgate_bytes_in_total", &[]),
        FILE_SIZE as f64
    );
    assert_eq!(value(&during, "sftpgate_bytes_out_total", &[]), 0.0);
    let writes = value(
        &during,
        "sftpgate_requests_total",
        &[("op", "write"), ("status", "ok")],
    );
    assert!(
        writes >= (FILE_SIZE / (256 << 10)) as f64,
        "{writes} WRITEs for {FILE_SIZE} bytes"
    );
    assert_eq!(
        value(
            &during,
            "sftpgate_requests_total",
            &[("op", "remove"), ("status", "no_such_file")]
        ),
        1.0
    );
    assert_eq!(value(&during, "sftpgate_requests_in_flight", &[]), 0.0);
    assert_eq!(
        value(
            &during,
            "sftpgate_auth_attempts_total",
            &[("method", "publickey"), ("result", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &during,
            "sftpgate_lifecycle_hook_seconds_count",
            &[("step", "sftp_factory")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &during,
            "sftpgate_lifecycle_hook_seconds_count",
            &[("step", "auth_completed")]
        ),
        1.0
    );

    sftp.send("get up.bin down.bin").unwrap();
    sftp.send("bye").unwrap();
    let status = common::wait_timeout(&mut sftp.child, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "sftp failed: {status:?}\n{}",
        sftp.stderr()
    );
    assert_eq!(
        std::fs::read(fixture.local().join("down.bin")).unwrap(),
        pattern(FILE_SIZE)
    );

    // The session's end is recorded once its exit ran.
    let after = wait_metrics(metrics, |m| {
        value(m, "sftpgate_sftp_session_duration_seconds_count", &[]) >= 1.0
    });
    assert_eq!(value(&after, "sftpgate_sftp_sessions_open", &[]), 0.0);
    assert_eq!(value(&after, "sftpgate_sftp_sessions_total", &[]), 1.0);
    assert_eq!(
        value(&after, "sftpgate_bytes_out_total", &[]),
        FILE_SIZE as f64
    );
    assert!(value(&after, "sftpgate_connections_total", &[]) >= 1.0);
    // The connection thread polled for the next request after small answers (idle_spin's
    // default), and counted the time it took.
    let spins = ["found", "missed"]
        .map(|result| value(&after, "sftpgate_idle_spins_total", &[("result", result)]));
    assert!(spins.iter().sum::<f64>() >= 1.0, "idle spins: {spins:?}");
    // A miss polled the whole budget (200 us).
    let spun = value(&after, "sftpgate_idle_spin_microseconds_total", &[]);
    assert!(spun >= 200.0 * spins[1], "{spun} us for {spins:?}");
    assert_eq!(
        value(
            &after,
            "sftpgate_lifecycle_hook_seconds_count",
            &[("step", "exit")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "sftpgate_requests_total",
            &[("op", "read"), ("status", "ok")]
        ) >= 1.0
    );
    assert_eq!(value(&after, "sftpgate_requests_in_flight", &[]), 0.0);
    // The exporter's format: HELP lines from the binary's descriptions.
    assert!(
        after.raw.contains("# HELP sftpgate_requests_total"),
        "{}",
        after.raw
    );
}

#[test]
fn health_answers_with_the_store_up() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    fixture.add_user(USER);
    let server = start_with_metrics(&fixture, &[]);
    let (status, body) = get(metrics_addr(&server), "/health");
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["store"]["ok"], true, "{report}");
    assert!(report.get("nats").is_none(), "{report}");

    let (status, _) = get(metrics_addr(&server), "/nothing");
    assert_eq!(status, 404);
}

#[test]
fn health_is_unavailable_when_configured_nats_does_not_answer() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    fixture.add_user(USER);
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = fixture.write(
        "nats-down.toml",
        &format!(
            "[nats]\nenabled = true\nservers = [\"nats://127.0.0.1:{port}\"]\n\
             [nats.provision]\nenabled = false\n[nats.events]\nenabled = false\n"
        ),
    );
    let server = start_with_metrics(&fixture, &["--config", config.to_str().unwrap()]);
    let started = Instant::now();
    let (status, body) = get(metrics_addr(&server), "/health");
    assert_eq!(status, 503, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "unavailable", "{report}");
    assert_eq!(report["store"]["ok"], true, "{report}");
    assert_eq!(report["nats"]["ok"], false, "{report}");
    assert!(
        report["nats"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{report}"
    );
    // Bounded by the check timeout, not by NATS's reconnection.
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn metrics_refuse_a_public_address_unless_allowed() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    fixture.add_user(USER);
    let mut serve = fixture.serve(None);
    serve.args(["--metrics-listen", "0.0.0.0:0"]);
    let out = match Server::start(serve) {
        Ok(_) => panic!("the server started with metrics on 0.0.0.0"),
        Err(out) => out,
    };
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("not a loopback address") && out.stderr.contains("allow_public"),
        "{}",
        out.show()
    );
}

#[test]
fn json_logs_parse_and_the_session_end_line_has_its_fields() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    fixture.add_user(USER);
    let mut serve = fixture.serve(None);
    serve.args(["--log-format", "json"]);
    let mut server = Server::start(serve).unwrap_or_else(|out| panic!("{}", out.show()));
    std::fs::write(fixture.local().join("up.bin"), pattern(100_000)).unwrap();
    let out = fixture.sftp(&server, USER, "put up.bin\nget up.bin down.bin\n");
    assert!(out.status.success(), "{}", out.show());
    // The session-end line is written after the exit, which may finish after the client.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr().contains("session ended") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.terminate(Duration::from_secs(20)).is_some());

    let stderr = server.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() >= 3, "{stderr}");
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    let end = lines
        .iter()
        .find(|l| l["message"] == "session ended")
        .unwrap_or_else(|| panic!("no session-end line in\n{stderr}"));
    assert_eq!(end["user"], USER, "{end}");
    assert!(
        end["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{end}"
    );
    assert_eq!(end["bytes_in"], 100_000, "{end}");
    assert_eq!(end["bytes_out"], 100_000, "{end}");
    assert!(end["reason"].is_string(), "{end}");
    assert!(end["duration"].is_string(), "{end}");
    assert!(end["exit_latency"].is_string(), "{end}");
}

#[test]
fn check_config_reports_every_error_with_its_location() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let bad = fixture.write(
        "bad.toml",
        "listen = \"127.0.0.1:2022\"\nlisten_typo = 1\n[timeouts]\nexit = \"soon\"\n\
         [nats]\ncredentials_file = \"/nonexistent.creds\"\n",
    );
    let out = check_config(&fixture, &bad);
    assert_eq!(out.status.code(), Some(1), "{}", out.show());
    let file = bad.display().to_string();
    assert!(
        out.stderr
            .contains(&format!("{file}:2:1: listen_typo: unknown field")),
        "{}",
        out.show()
    );
    assert!(
        out.stderr.contains(&format!("{file}:4:1: timeouts.exit: ")),
        "{}",
        out.show()
    );
    assert!(out.stderr.contains("2 problems"), "{}", out.show());

    // Once the keys are right, the file it names is checked.
    let missing = fixture.write(
        "missing.toml",
        "[nats]\ncredentials_file = \"/nonexistent.creds\"\n",
    );
    let out = check_config(&fixture, &missing);
    assert_eq!(out.status.code(), Some(1), "{}", out.show());
    assert!(
        out.stderr
            .contains(":2:1: nats.credentials_file: /nonexistent.creds: "),
        "{}",
        out.show()
    );

    let good = fixture.write(
        "good.toml",
        "listen = \"127.0.0.1:2022\"\n[metrics]\nlisten = \"127.0.0.1:9100\"\n",
    );
    let out = check_config(&fixture, &good);
    assert_eq!(out.status.code(), Some(0), "{}", out.show());
    assert!(out.stdout.contains("valid"), "{}", out.show());

    // Nothing was started: no data directory appeared.
    assert!(!fixture.path().join("sftpgate-data").exists());
}

// -------------------------------------------------------------------------------------------

/// `sftpgate serve` with `--metrics-listen 127.0.0.1:0` and `extra` arguments.
fn start_with_metrics(fixture: &Fixture, extra: &[&str]) -> Server {
    let mut serve = fixture.serve(None);
    serve.args(["--metrics-listen", "127.0.0.1:0"]).args(extra);
    Server::start(serve).unwrap_or_else(|out| panic!("the server did not start\n{}", out.show()))
}

/// The address from `sftpgate metrics on http://ADDR/metrics …`.
fn metrics_addr(server: &Server) -> SocketAddr {
    let stdout = server.stdout();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sftpgate metrics on http://"))
        .unwrap_or_else(|| panic!("no metrics line in\n{stdout}"));
    let addr: SocketAddr = line.split('/').next().unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{line}");
    addr
}

/// A minimal HTTP/1.1 GET: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A scrape: samples by name and sorted labels.
struct Metrics {
    raw: String,
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
}

fn scrape(addr: SocketAddr) -> Metrics {
    let (status, raw) = get(addr, "/metrics");
    assert_eq!(status, 200, "{raw}");
    let mut samples = BTreeMap::new();
    for line in raw.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, number) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<(String, String)> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        labels.sort();
        samples.insert((name.to_owned(), labels), number.parse().unwrap());
    }
    Metrics { raw, samples }
}

/// A sample's value; an absent series counts as 0 (the recorder shows a series once used).
fn value(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    metrics
        .samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

/// Scrapes until `ready` holds (at most 20 s: some figures are recorded just after the
/// client sees its answer).
fn wait_metrics(addr: SocketAddr, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape(addr);
        if ready(&metrics) || Instant::now() > deadline {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `sftpgate check-config FILE`.
fn check_config(fixture: &Fixture, file: &Path) -> common::Output {
    let mut cmd = fixture.sftpgate();
    cmd.arg("check-config").arg(file);
    common::run(&mut cmd, common::CLI_TIMEOUT)
}
