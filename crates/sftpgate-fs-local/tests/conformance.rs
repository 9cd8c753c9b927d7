//! The backend-independent conformance suite (`sftpgate_vfs::conformance`), one test per
//! check, each on a fresh empty root; and the whole suite on one root.

use sftpgate_fs_local::LocalFs;
use sftpgate_vfs::conformance::{self, Profile};

fn fresh() -> (tempfile::TempDir, LocalFs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = LocalFs::new(dir.path()).expect("LocalFs::new");
    (dir, fs)
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, fs) = fresh();
            conformance::$name(&fs).await;
        }
    )*};
}

checks!(
    create_read_write,
    exclusive_create,
    truncate_on_open,
    overwrite_in_place,
    append,
    truncate_via_setstat,
    read_past_eof,
    read_len_hint,
    read_parts,
    file_stat,
    mkdir_rmdir,
    remove,
    rename_no_replace,
    posix_rename_replaces,
    readdir_many,
    symlink_readlink,
    stat_vs_lstat,
    hardlink,
    error_status_codes,
    open_directory_fails,
    set_attributes,
    create_mode,
    concurrent_handle_io,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realpath() {
    let (_dir, fs) = fresh();
    conformance::realpath(&fs, &Profile::posix()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_root() {
    let (_dir, fs) = fresh();
    conformance::run_all(&fs).await;
}

/// The suite's `core` profile must also pass on a full backend (what an object-storage
/// backend would run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_profile() {
    let (_dir, fs) = fresh();
    conformance::run_profile(&fs, &Profile::core()).await;
}

/// The whole suite again with the root in memory (`/dev/shm`, tmpfs), where files take the
/// inline path of their small reads and writes instead of the pool: same behaviour either
/// way. Skipped (and says so) on a machine without a tmpfs at `/dev/shm`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_in_memory() {
    let shm = std::path::Path::new("/dev/shm");
    let is_tmpfs = rustix::fs::statfs(shm).is_ok_and(|fs| fs.f_type as u64 == 0x0102_1994);
    if !is_tmpfs {
        eprintln!("skipping: /dev/shm is not a tmpfs here");
        return;
    }
    let dir = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
    let fs = LocalFs::new(dir.path()).expect("LocalFs on tmpfs");
    conformance::run_all(&fs).await;
}
