//! How far ahead of OpenSSH's client the server sends (`ServerConfig::send_ahead`), seen
//! from the client: `ssh -vv` logs its channel window each time it grants more ("window N
//! sent adjust M", debug2), so `2 MiB - N` is what it held unacknowledged. The download is
//! held up on the client's side (`sftp` stopped for 300 ms, its `ssh` still reading), the
//! moment a server that is ahead of its client fills the client's buffers.

mod common;

use std::time::Duration;

use common::*;

/// The window OpenSSH's client opens for a session channel (CHAN_SES_WINDOW_DEFAULT).
const WINDOW: u64 = 2 * 1024 * 1024;
const SIZE: usize = 48 << 20;
/// Where `sftp` is stopped: past the first quarter of the download, which the checks skip
/// (the limit applies once the client has granted window early, at the start).
const PAUSE_AT: u64 = 24 << 20;
/// With the limit engaged the server keeps at most `max(limit, 2 x the least it saw
/// unacknowledged at an early grant (<= a quarter of the window))` in flight: 1 MiB here.
const MOST_AHEAD: u64 = 1024 * 1024;

/// Downloads `SIZE` bytes with `sftp -vv`, stopping `sftp` (not its `ssh`) for 300 ms once
/// `PAUSE_AT` bytes have arrived; checks the copy and returns the windows `ssh` reported at
/// each grant, or `None` without OpenSSH's client (a skip; CI requires it).
async fn windows_of_a_held_up_download(send_ahead: Option<russh::SendAhead>) -> Option<Vec<u64>> {
    let sftp = openssh("sftp")?;
    let mut server = TestServer::start(Options {
        send_ahead,
        ..Options::default()
    })
    .await;
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(server.root.join("big"), &data).unwrap();
    let local = server.scratch.join("got");
    let batch = server.scratch.join("batch");
    std::fs::write(&batch, format!("get /big {}\n", local.display())).unwrap();
    let batch = batch.display().to_string();
    let mut command = sftp_command(&server, &sftp, &["-vv", "-b", &batch]);
    command.stdin(std::process::Stdio::null());
    let mut child = command.spawn().expect("spawn sftp");

    let arrived = || std::fs::metadata(&local).map_or(0, |m| m.len());
    bounded("the download to reach the pause", async {
        while arrived() < PAUSE_AT {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sftp ended before the pause: {status}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let sftp_pid = rustix::process::Pid::from_raw(child.id().expect("sftp running") as i32)
        .expect("valid pid");
    rustix::process::kill_process(sftp_pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    let at_stop = arrived();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rustix::process::kill_process(sftp_pid, rustix::process::Signal::CONT).expect("SIGCONT");
    assert!(
        at_stop < SIZE as u64,
        "the download was over before sftp was stopped"
    );

    let done = finish(child).await;
    assert!(done.status.success(), "sftp failed: {}", done.stderr);
    assert!(std::fs::read(&local).unwrap() == data, "downloaded bytes");
    server.stop().await;

    let windows: Vec<u64> = done
        .stderr
        .lines()
        .filter(|line| line.contains(" sent adjust "))
        .filter_map(|line| {
            let rest = &line[line.find(": window ")? + ": window ".len()..];
            rest.split(' ').next()?.parse().ok()
        })
        .collect();
    assert!(
        windows.len() > 100,
        "{} grants logged by ssh -vv for {SIZE} bytes",
        windows.len()
    );
    Some(windows)
}

fn least_after_the_start(windows: &[u64]) -> u64 {
    windows[windows.len() / 4..].iter().copied().min().unwrap()
}

/// With the limit (here 512 KiB whatever the round trip: no rate), OpenSSH's client never
/// holds more than it unacknowledged, even while `sftp` takes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn openssh_holds_no_more_than_the_send_ahead_limit_while_sftp_is_stopped() {
    let Some(windows) = windows_of_a_held_up_download(Some(russh::SendAhead {
        min: 512 * 1024,
        bytes_per_second: 0,
    }))
    .await
    else {
        return;
    };
    let least = least_after_the_start(&windows);
    eprintln!("least window at a grant: {least} of {WINDOW}");
    assert!(
        least >= WINDOW - MOST_AHEAD,
        "ssh held {} bytes unacknowledged",
        WINDOW - least
    );
}

/// Without it the same download fills the client's whole window (what the first test
/// would see if the limit did nothing).
#[tokio::test(flavor = "multi_thread")]
async fn without_a_send_ahead_limit_openssh_takes_in_its_whole_window() {
    let Some(windows) = windows_of_a_held_up_download(None).await else {
        return;
    };
    let least = least_after_the_start(&windows);
    eprintln!("least window at a grant: {least} of {WINDOW}");
    assert!(
        least < WINDOW - MOST_AHEAD,
        "ssh never held more than {} bytes unacknowledged",
        WINDOW - least
    );
}
