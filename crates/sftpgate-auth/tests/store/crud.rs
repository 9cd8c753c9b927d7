//! Every operation of the store, on both backends.

use std::time::{Duration, SystemTime};

use sftpgate_auth::{
    Backend, KeySelector, NewUser, Password, Permissions, Storage, Store, StoreError,
};
use sftpgate_vfs::VPath;

use crate::common::{on_both_backends, TestDb, ALICE_KEY, BOB_KEY, ECDSA_KEY, RSA_2048_KEY};

on_both_backends!(
    migrations_are_idempotent,
    add_and_show_a_user,
    users_are_listed_by_name,
    remove_user_takes_keys_and_rules_along,
    password_set_and_clear,
    enable_disable_expiry_and_root,
    keys_add_list_remove,
    permissions_set_list_remove,
    first_user_only_once,
    session_profile_reads_the_current_state,
    object_store_storage,
);

fn perms(text: &str) -> Permissions {
    text.parse().expect("permission names")
}

fn alice() -> NewUser {
    let mut user = NewUser::new("alice", "/srv/sftp/alice");
    user.password = Some(Password::Plain("correct horse".into()));
    user.keys = vec![ALICE_KEY.into(), ECDSA_KEY.into()];
    user.permissions = vec![("/".into(), perms("list")), ("/in".into(), perms("all"))];
    user
}

async fn migrations_are_idempotent(db: &TestDb) {
    db.store.add_user(&alice()).await.expect("add");
    // Opening again runs the migrator again: nothing to do, nothing lost.
    let again = db.reopen().await;
    let third = db.reopen().await;
    assert_eq!(again.user_count().await.expect("count"), 1);
    assert_eq!(third.user("alice").await.expect("show").keys.len(), 2);
    assert_eq!(
        again.backend(),
        if db.url.starts_with("sqlite") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    );
    again.close().await;
    third.close().await;
}

async fn add_and_show_a_user(db: &TestDb) {
    let before = SystemTime::now() - Duration::from_secs(1);
    let record = db.store.add_user(&alice()).await.expect("add");
    assert_eq!(record.name, "alice");
    assert!(record.enabled);
    assert!(record.has_password);
    assert_eq!(record.expires_at, None);
    assert_eq!(record.root_dir, "/srv/sftp/alice");
    assert_eq!(record.storage, Storage::Local);
    assert_eq!((record.key_count, record.rule_count), (2, 2));
    assert!(record.created_at >= before && record.created_at == record.updated_at);

    let details = db.store.user("alice").await.expect("show");
    assert_eq!(details.user, record);
    let keys = &details.keys;
    assert_eq!(keys.len(), 2);
    assert_eq!((keys[0].index, keys[1].index), (1, 2));
    assert_eq!(keys[0].algorithm, "ssh-ed25519");
    assert_eq!(keys[0].comment, "alice@laptop");
    assert_eq!(keys[0].line, ALICE_KEY);
    assert!(keys[0].fingerprint.starts_with("SHA256:"));
    assert_eq!(keys[1].algorithm, "ecdsa-sha2-nistp256");
    let rules: Vec<(String, String)> = details
        .permissions
        .iter()
        .map(|r| (r.prefix.to_string(), r.permissions.to_string()))
        .collect();
    assert_eq!(
        rules,
        vec![
            ("/in".to_owned(), Permissions::all().to_string()),
            ("/".to_owned(), "list".to_owned())
        ]
    );
}

async fn users_are_listed_by_name(db: &TestDb) {
    for name in ["carol", "alice", "bob"] {
        db.store
            .add_user(&NewUser::new(name, format!("/srv/{name}")))
            .await
            .expect("add");
    }
    let names: Vec<String> = db
        .store
        .users()
        .await
        .expect("list")
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(db.store.user_count().await.expect("count"), 3);
    let bob = db.store.user_record("bob").await.expect("record");
    assert!(!bob.has_password);
    assert_eq!((bob.key_count, bob.rule_count), (0, 0));
}

async fn remove_user_takes_keys_and_rules_along(db: &TestDb) {
    db.store.add_user(&alice()).await.expect("add");
    db.store.remove_user("alice").await.expect("remove");
    assert!(matches!(
        db.store.user("alice").await,
        Err(StoreError::UnknownUser { name }) if name == "alice"
    ));
    // Same name again: nothing of the old user is left over.
    db.store
        .add_user(&NewUser::new("alice", "/srv/a"))
        .await
        .expect("add again");
    let details = db.store.user("alice").await.expect("show");
    assert!(details.keys.is_empty());
    assert!(details.permissions.is_empty());
    assert!(!details.user.has_password);
    // The key is free to be added again (it was unique per user).
    db.store.add_key("alice", ALICE_KEY).await.expect("key");
}

async fn password_set_and_clear(db: &TestDb) {
    db.store
        .add_user(&NewUser::new("bob", "/srv/bob"))
        .await
        .expect("add");
    db.store
        .set_password("bob", &Password::Plain("s3cret".into()))
        .await
        .expect("passwd");
    assert!(
        db.store
            .user_record("bob")
            .await
            .expect("record")
            .has_password
    );
    let hash = sftpgate_auth::password::hash_password(
        "imported",
        &sftpgate_auth::PasswordParams::insecure_for_tests(),
    )
    .expect("hash");
    db.store
        .set_password("bob", &Password::Hash(hash))
        .await
        .expect("import a hash");
    db.store.clear_password("bob").await.expect("clear");
    assert!(
        !db.store
            .user_record("bob")
            .await
            .expect("record")
            .has_password
    );
}

async fn enable_disable_expiry_and_root(db: &TestDb) {
    db.store
        .add_user(&NewUser::new("bob", "/srv/bob"))
        .await
        .expect("add");
    db.store.disable_user("bob").await.expect("disable");
    assert!(!db.store.user_record("bob").await.expect("record").enabled);
    db.store.enable_user("bob").await.expect("enable");
    assert!(db.store.user_record("bob").await.expect("record").enabled);

    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    db.store.set_expiry("bob", Some(at)).await.expect("expiry");
    let record = db.store.user_record("bob").await.expect("record");
    assert_eq!(record.expires_at, Some(at));
    assert!(record.is_expired_at(at));
    assert!(!record.is_expired_at(at - Duration::from_secs(1)));
    db.store.set_expiry("bob", None).await.expect("no expiry");
    assert_eq!(
        db.store
            .user_record("bob")
            .await
            .expect("record")
            .expires_at,
        None
    );

    db.store.set_root("bob", "/data/bob").await.expect("root");
    let record = db.store.user_record("bob").await.expect("record");
    assert_eq!(record.root_dir, "/data/bob");
    assert!(record.updated_at >= record.created_at);
}

async fn keys_add_list_remove(db: &TestDb) {
    db.store
        .add_user(&NewUser::new("bob", "/srv/bob"))
        .await
        .expect("add");
    assert!(db.store.keys("bob").await.expect("none yet").is_empty());
    let first = db.store.add_key("bob", BOB_KEY).await.expect("add key");
    assert_eq!((first.index, first.comment.as_str()), (1, "bob@desk"));
    let added = db
        .store
        .add_keys("bob", &[ECDSA_KEY, RSA_2048_KEY])
        .await
        .expect("add keys");
    assert_eq!(
        added.iter().map(|k| k.index).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let keys = db.store.keys("bob").await.expect("list");
    assert_eq!(
        keys.iter()
            .map(|k| k.algorithm.as_str())
            .collect::<Vec<_>>(),
        vec!["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]
    );

    // By index: the ecdsa key; the rsa key moves up to #2.
    let removed = db
        .store
        .remove_key("bob", &KeySelector::Index(2))
        .await
        .expect("remove #2");
    assert_eq!(removed.algorithm, "ecdsa-sha2-nistp256");
    let keys = db.store.keys("bob").await.expect("list");
    assert_eq!(keys[1].algorithm, "ssh-rsa");
    assert_eq!(keys[1].index, 2);

    // By fingerprint.
    let fingerprint = keys[0].fingerprint.clone();
    let removed = db
        .store
        .remove_key("bob", &fingerprint.parse().expect("selector"))
        .await
        .expect("remove by fingerprint");
    assert_eq!(removed.fingerprint, fingerprint);
    assert_eq!(db.store.keys("bob").await.expect("list").len(), 1);

    let err = db
        .store
        .remove_key("bob", &KeySelector::Index(5))
        .await
        .expect_err("no key #5");
    assert!(
        matches!(err, StoreError::UnknownKey { ref selector, .. } if selector == "#5"),
        "{err}"
    );
    let err = db
        .store
        .remove_key("bob", &KeySelector::Fingerprint(fingerprint))
        .await
        .expect_err("removed already");
    assert!(matches!(err, StoreError::UnknownKey { .. }), "{err}");
}

async fn permissions_set_list_remove(db: &TestDb) {
    db.store
        .add_user(&NewUser::new("bob", "/srv/bob"))
        .await
        .expect("add");
    assert!(db.store.permissions("bob").await.expect("none").is_empty());
    let rule = db
        .store
        .set_permission("bob", "/in//sub/../", perms("upload,list"))
        .await
        .expect("set");
    assert_eq!(rule.prefix, VPath::parse(b"/in").expect("path"));
    db.store
        .set_permission("bob", "/", perms("list"))
        .await
        .expect("set /");
    // Setting the same prefix again replaces the flags.
    db.store
        .set_permission("bob", "/in", perms("upload,list,mkdir"))
        .await
        .expect("replace");
    let rules = db.store.permissions("bob").await.expect("list");
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].prefix.to_string(), "/in");
    assert_eq!(rules[0].permissions, perms("list,upload,mkdir"));
    assert_eq!(rules[1].prefix.to_string(), "/");

    db.store
        .remove_permission("bob", "/in/")
        .await
        .expect("remove");
    let rules = db.store.permissions("bob").await.expect("list");
    assert_eq!(rules.len(), 1);
    let err = db
        .store
        .remove_permission("bob", "/in")
        .await
        .expect_err("gone");
    assert!(
        matches!(err, StoreError::UnknownRule { ref prefix, .. } if prefix == "/in"),
        "{err}"
    );
    // "none" is a rule too: it denies everything under its prefix.
    db.store
        .set_permission("bob", "/private", Permissions::empty())
        .await
        .expect("none");
    let table = db
        .store
        .session_profile("bob")
        .await
        .expect("profile")
        .permissions;
    assert!(table
        .for_path(&VPath::parse(b"/private/x").expect("path"))
        .is_empty());
}

async fn first_user_only_once(db: &TestDb) {
    let first = db
        .store
        .add_first_user(&NewUser::new("admin", "/srv/admin"))
        .await
        .expect("first");
    assert_eq!(first.expect("created").name, "admin");
    let second = db
        .store
        .add_first_user(&NewUser::new("other", "/srv/other"))
        .await
        .expect("second");
    assert!(second.is_none());
    assert_eq!(db.store.user_count().await.expect("count"), 1);
}

async fn session_profile_reads_the_current_state(db: &TestDb) {
    db.store.add_user(&alice()).await.expect("add");
    let profile = db.store.session_profile("alice").await.expect("profile");
    assert_eq!(profile.name, "alice");
    assert_eq!(profile.root_dir, "/srv/sftp/alice");
    assert_eq!(profile.storage, Storage::Local);
    let inbox = VPath::parse(b"/in/x").expect("path");
    assert_eq!(profile.permissions.for_path(&inbox), Permissions::all());

    // Changes show in the next profile (a new session), not in the one read before.
    db.store
        .set_permission("alice", "/in", perms("list"))
        .await
        .expect("restrict");
    let other_node: Store = db.reopen().await;
    let next = other_node.session_profile("alice").await.expect("profile");
    assert_eq!(next.permissions.for_path(&inbox), perms("list"));
    assert_eq!(profile.permissions.for_path(&inbox), Permissions::all());

    db.store.disable_user("alice").await.expect("disable");
    assert!(matches!(
        other_node.session_profile("alice").await,
        Err(StoreError::UserDisabled { name }) if name == "alice"
    ));
    db.store.enable_user("alice").await.expect("enable");
    let past = SystemTime::now() - Duration::from_secs(60);
    db.store
        .set_expiry("alice", Some(past))
        .await
        .expect("expire");
    assert!(matches!(
        other_node.session_profile("alice").await,
        Err(StoreError::UserExpired { name }) if name == "alice"
    ));
    let later = past + Duration::from_secs(3600);
    db.store
        .set_expiry("alice", Some(later))
        .await
        .expect("extend");
    other_node
        .session_profile_at("alice", later - Duration::from_secs(1))
        .await
        .expect("not yet expired");
    assert!(matches!(
        other_node.session_profile_at("alice", later).await,
        Err(StoreError::UserExpired { .. })
    ));
    assert!(matches!(
        other_node.session_profile("nobody").await,
        Err(StoreError::UnknownUser { .. })
    ));
    other_node.close().await;
}

#[tokio::test]
async fn the_default_store_is_a_wal_mode_sqlite_file_in_the_data_dir() {
    use sqlx::Connection as _;

    let dir = tempfile::tempdir().expect("a tempdir");
    let data_dir = dir.path().join("data");
    let store = Store::open_data_dir(&data_dir, crate::common::config())
        .await
        .expect("open");
    assert_eq!(store.backend(), Backend::Sqlite);
    store
        .add_user(&NewUser::new("alice", "/srv/alice"))
        .await
        .expect("add");
    store.close().await;
    let file = data_dir.join(sftpgate_auth::DEFAULT_DATABASE_FILE);
    assert!(file.is_file());
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .expect("connect");
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    conn.close().await.expect("close");
    // Opening it again finds the user.
    let again = Store::open_data_dir(&data_dir, crate::common::config())
        .await
        .expect("reopen");
    assert_eq!(again.user_count().await.expect("count"), 1);
    again.close().await;
}

async fn object_store_storage(db: &TestDb) {
    db.store
        .add_user(&NewUser::new("carol", "/srv/carol"))
        .await
        .expect("add");
    let s3 = Storage::ObjectStore {
        bucket: "files".into(),
    };
    db.store
        .set_storage("carol", &s3, "users/carol")
        .await
        .expect("set object storage");
    let profile = db.store.session_profile("carol").await.expect("profile");
    assert_eq!(profile.storage, s3);
    assert_eq!(profile.root_dir, "users/carol");
    // A key prefix need not be absolute; an empty one (the whole bucket) is refused.
    assert!(db.store.set_storage("carol", &s3, "").await.is_err());
    // Back to a local root, which must be absolute again.
    assert!(db
        .store
        .set_storage("carol", &Storage::Local, "relative")
        .await
        .is_err());
    db.store
        .set_storage("carol", &Storage::Local, "/srv/carol2")
        .await
        .expect("back to local");
    let record = db.store.user_record("carol").await.expect("record");
    assert_eq!(
        (record.storage, record.root_dir.as_str()),
        (Storage::Local, "/srv/carol2")
    );
    let err = db
        .store
        .set_storage("nobody", &s3, "p")
        .await
        .expect_err("unknown user");
    assert!(matches!(err, StoreError::UnknownUser { .. }), "{err:?}");
}
