//! The authenticator on both backends: who gets in, what a failed lookup costs, bans and
//! their expiry, and many logins at once.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use sftpgate_auth::{
    AuthConfig, AuthorizedKey, BanConfig, BanKind, KeyStage, NewUser, Outcome, Password,
    StoreAuthenticator,
};
use sftpgate_server::keys::PublicKey;
use sftpgate_server::Authenticator as _;
use tokio::time::Instant;

use crate::common::{on_both_backends, TestDb, ALICE_KEY, BOB_KEY, ECDSA_KEY};

on_both_backends!(
    passwords_accepted_and_rejected,
    keys_accepted_and_rejected,
    changes_apply_to_the_next_login,
    failed_lookups_cost_a_verification,
    failed_passwd_keeps_the_old_password,
    address_ban_and_its_expiry,
    user_ban_spans_addresses_and_spares_keys,
    key_offers_never_count,
    concurrent_password_logins,
);

const MINUTE: Duration = Duration::from_secs(60);

fn peer(last: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, last])
}

fn key(line: &str) -> PublicKey {
    AuthorizedKey::parse(line).expect("a key").key().clone()
}

async fn authenticator(db: &TestDb, ban: BanConfig) -> StoreAuthenticator {
    let mut config = AuthConfig::default();
    config.ban = ban;
    StoreAuthenticator::new(db.store.clone(), config)
        .await
        .expect("authenticator")
}

/// alice (password "alice-pw", ALICE_KEY), bob (password "bob-pw", BOB_KEY), keyonly
/// (ECDSA_KEY, no password).
async fn users(db: &TestDb) {
    for (name, password, key) in [
        ("alice", Some("alice-pw"), ALICE_KEY),
        ("bob", Some("bob-pw"), BOB_KEY),
        ("keyonly", None, ECDSA_KEY),
    ] {
        let mut user = NewUser::new(name, format!("/srv/{name}"));
        user.password = password.map(|p| Password::Plain(p.into()));
        user.keys = vec![key.into()];
        db.store.add_user(&user).await.expect("add");
    }
}

async fn passwords_accepted_and_rejected(db: &TestDb) {
    users(db).await;
    let auth = authenticator(db, BanConfig::default()).await;
    let ip = peer(1);
    assert_eq!(
        auth.check_password("alice", "alice-pw", ip).await,
        Outcome::Accepted
    );
    assert_eq!(
        auth.check_password("alice", "bob-pw", ip).await,
        Outcome::Rejected
    );
    assert_eq!(
        auth.check_password("alice", "", ip).await,
        Outcome::Rejected
    );
    assert_eq!(
        auth.check_password("nobody", "alice-pw", ip).await,
        Outcome::Rejected
    );
    assert_eq!(
        auth.check_password("keyonly", "", ip).await,
        Outcome::Rejected
    );
    assert_eq!(
        auth.check_password("keyonly", "x", ip).await,
        Outcome::Rejected
    );

    db.store.disable_user("bob").await.expect("disable");
    assert_eq!(
        auth.check_password("bob", "bob-pw", ip).await,
        Outcome::Rejected
    );
    db.store.enable_user("bob").await.expect("enable");
    let past = SystemTime::now() - MINUTE;
    db.store
        .set_expiry("bob", Some(past))
        .await
        .expect("expire");
    assert_eq!(
        auth.check_password("bob", "bob-pw", ip).await,
        Outcome::Rejected
    );
    db.store
        .set_expiry("bob", Some(SystemTime::now() + MINUTE))
        .await
        .expect("extend");
    assert_eq!(
        auth.check_password("bob", "bob-pw", ip).await,
        Outcome::Accepted
    );

    // Through the server's trait.
    let addr = SocketAddr::new(ip, 40000);
    assert!(auth.password("alice", "alice-pw", addr).await);
    assert!(!auth.password("alice", "nope", addr).await);
}

async fn keys_accepted_and_rejected(db: &TestDb) {
    users(db).await;
    let auth = authenticator(db, BanConfig::default()).await;
    let ip = peer(1);
    let check = |user: &'static str, line: &'static str| {
        let auth = auth.clone();
        async move {
            auth.check_publickey(user, &key(line), ip, KeyStage::Signed)
                .await
        }
    };
    assert_eq!(check("alice", ALICE_KEY).await, Outcome::Accepted);
    assert_eq!(check("keyonly", ECDSA_KEY).await, Outcome::Accepted);
    // Another user's key.
    assert_eq!(check("alice", BOB_KEY).await, Outcome::Rejected);
    assert_eq!(check("nobody", ALICE_KEY).await, Outcome::Rejected);

    db.store.disable_user("alice").await.expect("disable");
    assert_eq!(check("alice", ALICE_KEY).await, Outcome::Rejected);
    db.store.enable_user("alice").await.expect("enable");
    db.store
        .set_expiry("alice", Some(SystemTime::now() - MINUTE))
        .await
        .expect("expire");
    assert_eq!(check("alice", ALICE_KEY).await, Outcome::Rejected);
    db.store.set_expiry("alice", None).await.expect("unexpire");

    let addr = SocketAddr::new(ip, 40000);
    assert!(auth.publickey("alice", &key(ALICE_KEY), addr).await);
    assert!(!auth.publickey("bob", &key(ALICE_KEY), addr).await);
}

async fn changes_apply_to_the_next_login(db: &TestDb) {
    users(db).await;
    let auth = authenticator(db, BanConfig::default()).await;
    // Another node (or the CLI) changes the store; this authenticator sees it at once.
    let other = db.reopen().await;
    let ip = peer(1);
    other
        .set_password("alice", &Password::Plain("new-pw".into()))
        .await
        .expect("passwd");
    assert_eq!(
        auth.check_password("alice", "alice-pw", ip).await,
        Outcome::Rejected
    );
    assert_eq!(
        auth.check_password("alice", "new-pw", ip).await,
        Outcome::Accepted
    );
    other.add_key("alice", ECDSA_KEY).await.expect("key");
    assert_eq!(
        auth.check_publickey("alice", &key(ECDSA_KEY), ip, KeyStage::Offered)
            .await,
        Outcome::Accepted
    );
    other
        .remove_key("alice", &"1".parse().expect("selector"))
        .await
        .expect("remove");
    assert_eq!(
        auth.check_publickey("alice", &key(ALICE_KEY), ip, KeyStage::Offered)
            .await,
        Outcome::Rejected
    );
    other.remove_user("alice").await.expect("remove user");
    assert_eq!(
        auth.check_password("alice", "new-pw", ip).await,
        Outcome::Rejected
    );
    let mut dave = NewUser::new("dave", "/srv/dave");
    dave.password = Some(Password::Plain("dave-pw".into()));
    other.add_user(&dave).await.expect("add dave");
    assert_eq!(
        auth.check_password("dave", "dave-pw", ip).await,
        Outcome::Accepted
    );
    other.close().await;
}

async fn failed_lookups_cost_a_verification(db: &TestDb) {
    users(db).await;
    db.store.disable_user("bob").await.expect("disable");
    let auth = authenticator(db, BanConfig::default()).await;
    let ip = peer(1);
    // Every path that ends in "no" runs argon2 exactly once, like a wrong password does:
    // unknown user, disabled user, user without a password, expired user, wrong password.
    let mut expected = auth.password_verifications();
    for (user, password) in [
        ("nobody", "x"),
        ("bob", "bob-pw"),
        ("keyonly", "x"),
        ("alice", "wrong"),
        ("alice", "alice-pw"),
    ] {
        auth.check_password(user, password, ip).await;
        expected += 1;
        assert_eq!(auth.password_verifications(), expected, "{user}");
    }
    db.store
        .set_expiry("alice", Some(SystemTime::now() - MINUTE))
        .await
        .expect("expire");
    assert_eq!(
        auth.check_password("alice", "alice-pw", ip).await,
        Outcome::Rejected
    );
    assert_eq!(auth.password_verifications(), expected + 1);
}

async fn failed_passwd_keeps_the_old_password(db: &TestDb) {
    users(db).await;
    let auth = authenticator(db, BanConfig::default()).await;
    db.store
        .set_password("alice", &Password::Plain(String::new()))
        .await
        .expect_err("empty password");
    assert_eq!(
        auth.check_password("alice", "alice-pw", peer(1)).await,
        Outcome::Accepted
    );
}

async fn address_ban_and_its_expiry(db: &TestDb) {
    users(db).await;
    let auth = authenticator(db, BanConfig::new(3, 5 * MINUTE, 15 * MINUTE)).await;
    let (attacker, other) = (peer(66), peer(7));
    let t0 = Instant::now();
    for user in ["alice", "bob", "nobody"] {
        assert_eq!(
            auth.check_password_at(user, "guess", attacker, t0).await,
            Outcome::Rejected
        );
    }
    // Banned: even the right password is refused, without being checked.
    let verifications = auth.password_verifications();
    let t1 = t0 + MINUTE;
    assert_eq!(
        auth.check_password_at("alice", "alice-pw", attacker, t1)
            .await,
        Outcome::Refused(BanKind::Address)
    );
    assert_eq!(
        auth.check_publickey_at("alice", &key(ALICE_KEY), attacker, KeyStage::Signed, t1)
            .await,
        Outcome::Refused(BanKind::Address)
    );
    assert_eq!(auth.password_verifications(), verifications);
    // Other addresses are not affected.
    assert_eq!(
        auth.check_password_at("alice", "alice-pw", other, t1).await,
        Outcome::Accepted
    );
    // The ban ends 15 minutes after it started.
    let almost = t0 + 15 * MINUTE - Duration::from_secs(1);
    assert_eq!(
        auth.check_password_at("alice", "alice-pw", attacker, almost)
            .await,
        Outcome::Refused(BanKind::Address)
    );
    assert_eq!(
        auth.check_password_at("alice", "alice-pw", attacker, t0 + 15 * MINUTE)
            .await,
        Outcome::Accepted
    );
}

async fn user_ban_spans_addresses_and_spares_keys(db: &TestDb) {
    users(db).await;
    let auth = authenticator(db, BanConfig::new(3, 5 * MINUTE, 15 * MINUTE)).await;
    let t0 = Instant::now();
    for last in 1..=3 {
        auth.check_password_at("alice", "guess", peer(last), t0)
            .await;
    }
    assert_eq!(
        auth.check_password_at("alice", "alice-pw", peer(4), t0)
            .await,
        Outcome::Refused(BanKind::User)
    );
    // Others from the same addresses are fine; alice's key still works (default).
    assert_eq!(
        auth.check_password_at("bob", "bob-pw", peer(1), t0).await,
        Outcome::Accepted
    );
    assert_eq!(
        auth.check_publickey_at("alice", &key(ALICE_KEY), peer(4), KeyStage::Signed, t0)
            .await,
        Outcome::Accepted
    );
    // Unless user bans are configured to cover keys.
    let mut config = AuthConfig::default();
    config.ban = BanConfig::new(3, 5 * MINUTE, 15 * MINUTE);
    config.user_ban_covers_publickey = true;
    let strict = StoreAuthenticator::new(db.store.clone(), config)
        .await
        .expect("authenticator");
    for last in 1..=3 {
        strict
            .check_password_at("alice", "guess", peer(last), t0)
            .await;
    }
    assert_eq!(
        strict
            .check_publickey_at("alice", &key(ALICE_KEY), peer(4), KeyStage::Offered, t0)
            .await,
        Outcome::Refused(BanKind::User)
    );
    assert_eq!(
        strict
            .check_password_at("alice", "alice-pw", peer(4), t0 + 15 * MINUTE)
            .await,
        Outcome::Accepted
    );
}

async fn key_offers_never_count(db: &TestDb) {
    users(db).await;
    let auth = authenticator(db, BanConfig::new(3, 5 * MINUTE, 15 * MINUTE)).await;
    let ip = peer(9);
    let t0 = Instant::now();
    // An agent full of keys that are not alice's: offered and rejected many times.
    for _ in 0..10 {
        assert_eq!(
            auth.check_publickey_at("alice", &key(BOB_KEY), ip, KeyStage::Offered, t0)
                .await,
            Outcome::Rejected
        );
    }
    assert_eq!(
        auth.check_publickey_at("alice", &key(ALICE_KEY), ip, KeyStage::Offered, t0)
            .await,
        Outcome::Accepted
    );
    // Rejections after a verified signature do count.
    for _ in 0..3 {
        auth.check_publickey_at("alice", &key(BOB_KEY), ip, KeyStage::Signed, t0)
            .await;
    }
    assert_eq!(
        auth.check_publickey_at("alice", &key(ALICE_KEY), ip, KeyStage::Offered, t0)
            .await,
        Outcome::Refused(BanKind::Address)
    );
}

async fn concurrent_password_logins(db: &TestDb) {
    users(db).await;
    let auth = authenticator(db, BanConfig::default()).await;
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let auth = auth.clone();
        logins.spawn(async move {
            let (user, password) = if i % 2 == 0 {
                ("alice", "alice-pw")
            } else {
                ("bob", "bob-pw")
            };
            let ip = IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8]);
            auth.check_password(user, password, ip).await
        });
    }
    let mut accepted = 0;
    while let Some(outcome) = logins.join_next().await {
        assert_eq!(outcome.expect("login task"), Outcome::Accepted);
        accepted += 1;
    }
    assert_eq!(accepted, 200);
    assert_eq!(auth.password_verifications(), 200);
}
