//! Bad input is a typed error and writes nothing, on both backends.

use std::time::SystemTime;

use sftpgate_auth::{KeySelector, NewUser, Password, Permissions, Store, StoreError, UserDetails};

use crate::common::{on_both_backends, TestDb, ALICE_KEY, BOB_KEY, ECDSA_KEY, RSA_1024_KEY};

on_both_backends!(
    bad_new_users_write_nothing,
    bad_keys_write_nothing,
    bad_passwords_roots_and_prefixes_write_nothing,
    unknown_users_are_reported_by_every_operation,
    unsupported_url_is_refused,
);

/// Everything the store holds (for users, keys and rules; `updated_at` included).
async fn snapshot(store: &Store) -> Vec<UserDetails> {
    let mut all = Vec::new();
    for user in store.users().await.expect("list") {
        all.push(store.user(&user.name).await.expect("show"));
    }
    all
}

/// Runs `op`, checks its error with `expected`, and that nothing changed.
async fn check<T: std::fmt::Debug>(
    store: &Store,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
    expected: impl Fn(&StoreError) -> bool,
) {
    let before = snapshot(store).await;
    let err = op.await.expect_err("bad input must fail");
    assert!(expected(&err), "unexpected error: {err:?}");
    assert!(err.is_input_error(), "{err:?}");
    assert!(!err.to_string().is_empty());
    assert_eq!(snapshot(store).await, before, "after {err}");
}

async fn existing(store: &Store) {
    let mut bob = NewUser::new("bob", "/srv/bob");
    bob.keys = vec![BOB_KEY.into()];
    bob.password = Some(Password::Plain("pw".into()));
    bob.permissions = vec![("/".into(), Permissions::LIST)];
    store.add_user(&bob).await.expect("add bob");
}

fn user_with(edit: impl FnOnce(&mut NewUser)) -> NewUser {
    let mut user = NewUser::new("carol", "/srv/carol");
    user.password = Some(Password::Plain("pw".into()));
    user.keys = vec![ALICE_KEY.into()];
    edit(&mut user);
    user
}

async fn bad_new_users_write_nothing(db: &TestDb) {
    let store = &db.store;
    existing(store).await;
    check(
        store,
        store.add_user(&NewUser::new("bob", "/elsewhere")),
        |e| matches!(e, StoreError::DuplicateUser { name } if name == "bob"),
    )
    .await;
    check(
        store,
        store.add_user(&user_with(|u| {
            u.keys.push("ssh-ed25519 AAAAnot-a-key".into())
        })),
        |e| matches!(e, StoreError::InvalidKey { .. }),
    )
    .await;
    check(
        store,
        store.add_user(&user_with(|u| u.keys.push(RSA_1024_KEY.into()))),
        |e| {
            matches!(
                e,
                StoreError::WeakKey {
                    bits: 1024,
                    min_bits: 2048
                }
            )
        },
    )
    .await;
    check(
        store,
        store.add_user(&user_with(|u| u.keys.push(ALICE_KEY.into()))),
        |e| matches!(e, StoreError::DuplicateKey { user, .. } if user == "carol"),
    )
    .await;
    check(
        store,
        store.add_user(&user_with(|u| {
            u.password = Some(Password::Plain(String::new()))
        })),
        |e| matches!(e, StoreError::EmptyPassword),
    )
    .await;
    check(
        store,
        store.add_user(&user_with(|u| {
            u.password = Some(Password::Hash("$md5$x".into()))
        })),
        |e| matches!(e, StoreError::InvalidPasswordHash),
    )
    .await;
    check(
        store,
        store.add_user(&user_with(|u| u.name = "no spaces".into())),
        |e| matches!(e, StoreError::InvalidUserName { .. }),
    )
    .await;
    check(
        store,
        store.add_user(&user_with(|u| u.root_dir = "relative/dir".into())),
        |e| matches!(e, StoreError::InvalidRoot { .. }),
    )
    .await;
    check(
        store,
        store.add_user(&user_with(|u| {
            u.permissions = vec![
                ("/ok".into(), Permissions::LIST),
                ("bad".into(), Permissions::LIST),
            ]
        })),
        |e| matches!(e, StoreError::InvalidPrefix { prefix, .. } if prefix == "bad"),
    )
    .await;
    // The same user without the mistakes goes in.
    store
        .add_user(&user_with(|_| {}))
        .await
        .expect("valid carol");
}

async fn bad_keys_write_nothing(db: &TestDb) {
    let store = &db.store;
    existing(store).await;
    check(store, store.add_key("bob", "   "), |e| {
        matches!(e, StoreError::InvalidKey { .. })
    })
    .await;
    check(
        store,
        store.add_key("bob", BOB_KEY),
        |e| matches!(e, StoreError::DuplicateKey { user, .. } if user == "bob"),
    )
    .await;
    // Several keys: one bad one and none is added.
    check(
        store,
        store.add_keys("bob", &[ECDSA_KEY, "ssh-rsa AAAA"]),
        |e| matches!(e, StoreError::InvalidKey { .. }),
    )
    .await;
    check(
        store,
        store.add_keys("bob", &[ECDSA_KEY, RSA_1024_KEY]),
        |e| matches!(e, StoreError::WeakKey { .. }),
    )
    .await;
    check(store, store.add_keys("bob", &[ECDSA_KEY, BOB_KEY]), |e| {
        matches!(e, StoreError::DuplicateKey { .. })
    })
    .await;
    check(store, store.add_keys("bob", &[ECDSA_KEY, ECDSA_KEY]), |e| {
        matches!(e, StoreError::DuplicateKey { .. })
    })
    .await;
    check(
        store,
        store.add_key("bob", &format!("command=\"/bin/sh\" {ECDSA_KEY}")),
        |e| matches!(e, StoreError::InvalidKey { reason } if reason.contains("options")),
    )
    .await;
    check(
        store,
        store.remove_key("bob", &KeySelector::Index(2)),
        |e| matches!(e, StoreError::UnknownKey { .. }),
    )
    .await;
    assert_eq!(store.keys("bob").await.expect("keys").len(), 1);
}

async fn bad_passwords_roots_and_prefixes_write_nothing(db: &TestDb) {
    let store = &db.store;
    existing(store).await;
    check(
        store,
        store.set_password("bob", &Password::Plain(String::new())),
        |e| matches!(e, StoreError::EmptyPassword),
    )
    .await;
    check(
        store,
        store.set_password("bob", &Password::Hash("plain text".into())),
        |e| matches!(e, StoreError::InvalidPasswordHash),
    )
    .await;
    check(store, store.set_root("bob", ""), |e| {
        matches!(e, StoreError::InvalidRoot { .. })
    })
    .await;
    check(store, store.set_root("bob", "srv/bob"), |e| {
        matches!(e, StoreError::InvalidRoot { .. })
    })
    .await;
    check(
        store,
        store.set_permission("bob", "in", Permissions::all()),
        |e| matches!(e, StoreError::InvalidPrefix { .. }),
    )
    .await;
    check(store, store.remove_permission("bob", "/nothing"), |e| {
        matches!(e, StoreError::UnknownRule { .. })
    })
    .await;
    check(
        store,
        async { "list,teleport".parse::<Permissions>() },
        |e| matches!(e, StoreError::UnknownPermission { name, .. } if name == "teleport"),
    )
    .await;
}

async fn unknown_users_are_reported_by_every_operation(db: &TestDb) {
    let store = &db.store;
    existing(store).await;
    let unknown =
        |e: &StoreError| matches!(e, StoreError::UnknownUser { name } if name == "nobody");
    check(store, store.user("nobody"), unknown).await;
    check(store, store.user_record("nobody"), unknown).await;
    check(store, store.remove_user("nobody"), unknown).await;
    check(
        store,
        store.set_password("nobody", &Password::Plain("pw".into())),
        unknown,
    )
    .await;
    check(store, store.clear_password("nobody"), unknown).await;
    check(store, store.enable_user("nobody"), unknown).await;
    check(store, store.disable_user("nobody"), unknown).await;
    check(
        store,
        store.set_expiry("nobody", Some(SystemTime::now())),
        unknown,
    )
    .await;
    check(store, store.set_root("nobody", "/srv/x"), unknown).await;
    check(store, store.add_key("nobody", ECDSA_KEY), unknown).await;
    check(store, store.add_keys("nobody", &[ECDSA_KEY]), unknown).await;
    check(store, store.keys("nobody"), unknown).await;
    check(
        store,
        store.remove_key("nobody", &KeySelector::Index(1)),
        unknown,
    )
    .await;
    check(
        store,
        store.set_permission("nobody", "/", Permissions::all()),
        unknown,
    )
    .await;
    check(store, store.permissions("nobody"), unknown).await;
    check(store, store.remove_permission("nobody", "/"), unknown).await;
    check(store, store.session_profile("nobody"), unknown).await;
}

async fn unsupported_url_is_refused(_db: &TestDb) {
    let err = Store::connect("mysql://root:hunter2@localhost/db", crate::common::config())
        .await
        .expect_err("mysql is not supported");
    assert!(
        matches!(&err, StoreError::UnsupportedUrl { scheme } if scheme == "mysql"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");
}
