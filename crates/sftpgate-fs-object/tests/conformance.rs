//! The backend-independent conformance suite (`sftpgate_vfs::conformance`) on the object
//! backend: every check on an in-memory store, and on the real S3 server (Garage) when
//! `SFTPGATE_TEST_S3_*` says where it is.
//!
//! The profile is the core plus `posix_rename` and `append`. Documented differences
//! (docs/object-storage.md): no symlinks or hard links, no writes before the end of what
//! was written (`random_writes`), no permissions or times (`set_attributes`), and REALPATH
//! is lexical.

mod common;

use sftpgate_fs_object::ObjectConfig;
use sftpgate_vfs::conformance::{self, Profile};

fn profile() -> Profile {
    let mut profile = Profile::core();
    profile.posix_rename = true;
    profile.append = true;
    profile
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_store, fs) = common::memory_fs(ObjectConfig::default());
                    conformance::$name(&fs).await;
                }
            )*
        }
        mod s3 {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some((_store, _prefix, fs)) =
                        common::s3_fs(stringify!($name), ObjectConfig::default())
                    else {
                        return;
                    };
                    conformance::$name(&fs).await;
                }
            )*
        }
    };
}

checks!(
    create_read_write,
    exclusive_create,
    truncate_on_open,
    append,
    read_past_eof,
    read_parts,
    file_stat,
    mkdir_rmdir,
    remove,
    rename_no_replace,
    posix_rename_replaces,
    readdir_many,
    error_status_codes,
    open_directory_fails,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_realpath() {
    let (_store, fs) = common::memory_fs(ObjectConfig::default());
    conformance::realpath(&fs, &profile()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_profile_on_one_root() {
    let (_store, fs) = common::memory_fs(ObjectConfig::default());
    conformance::run_profile(&fs, &profile()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_profile_on_one_root() {
    let Some((_store, _prefix, fs)) = common::s3_fs("profile", ObjectConfig::default()) else {
        return;
    };
    conformance::run_profile(&fs, &profile()).await;
}
