//! Every output checked against aws-lc's implementation (what russh uses upstream), byte for
//! byte, in both directions.

use aws_lc_rs::aead::chacha20_poly1305_openssh as reference;
use proptest::prelude::*;

use super::*;

fn packet(len: usize, fill: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(PACKET_LENGTH_LEN + len);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend((0..len).map(|i| fill.wrapping_add(i as u8)));
    p
}

fn key(seed: u8) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
}

/// Seals with both implementations and checks they agree; returns ours.
fn seal_both(key: &[u8; KEY_LEN], seq: u32, plain: &[u8]) -> (Vec<u8>, [u8; TAG_LEN]) {
    let mut ours = plain.to_vec();
    let mut our_tag = [0u8; TAG_LEN];
    SealingKey::new(key).seal_in_place(seq, &mut ours, &mut our_tag);

    let mut theirs = plain.to_vec();
    let mut their_tag = [0u8; TAG_LEN];
    reference::SealingKey::new(key).seal_in_place(seq, &mut theirs, &mut their_tag);

    assert_eq!(ours, theirs, "ciphertext differs from aws-lc's (seq {seq})");
    assert_eq!(our_tag, their_tag, "tag differs from aws-lc's (seq {seq})");
    // The payload was really encrypted: a body of 16 bytes or more comes out the same only
    // with probability 2^-128 (a shorter one may, by chance, and an empty one always does).
    if plain.len() >= PACKET_LENGTH_LEN + 16 {
        assert_ne!(&ours[PACKET_LENGTH_LEN..], &plain[PACKET_LENGTH_LEN..]);
    }
    (ours, our_tag)
}

#[test]
fn this_libcrypto_provides_the_cipher() {
    assert_eq!(check(), Ok(()));
}

#[test]
fn seals_as_aws_lc_does_at_packet_sizes_russh_sends() {
    // Sizes around a 32 KiB channel packet and the largest (256 KiB) SSH packet, and the
    // sequence numbers where the nonce's bytes roll over.
    for &len in &[12, 28, 60, 1020, 32_784, 32_788, 262_140] {
        for &seq in &[0, 1, 255, 256, 65_535, u32::MAX - 1, u32::MAX] {
            let plain = packet(len, seq as u8);
            let (sealed, tag) = seal_both(&key(len as u8), seq, &plain);

            let mut opened = sealed.clone();
            let got = OpeningKey::new(&key(len as u8))
                .open_in_place(seq, &mut opened, &tag)
                .expect("our tag verifies");
            assert_eq!(got, &plain[PACKET_LENGTH_LEN..]);
        }
    }
}

#[test]
fn one_key_seals_a_sequence_of_packets_as_fresh_keys_do() {
    // The contexts are re-used per packet: nothing from one packet may leak into the next.
    let k = key(7);
    let mut sealer = SealingKey::new(&k);
    let mut opener = OpeningKey::new(&k);
    for seq in 0..50u32 {
        let plain = packet(100 + seq as usize * 37, seq as u8);
        let (expected, expected_tag) = seal_both(&k, seq, &plain);
        let mut sealed = plain.clone();
        let mut tag = [0u8; TAG_LEN];
        sealer.seal_in_place(seq, &mut sealed, &mut tag);
        assert_eq!((&sealed, tag), (&expected, expected_tag));

        let length: [u8; 4] = sealed[..4].try_into().unwrap();
        assert_eq!(opener.decrypt_packet_length(seq, length), plain[..4]);
        let got = opener.open_in_place(seq, &mut sealed, &tag).unwrap();
        assert_eq!(got, &plain[PACKET_LENGTH_LEN..]);
    }
}

#[test]
fn a_wrong_tag_sequence_number_or_byte_is_refused_and_nothing_is_decrypted() {
    let k = key(3);
    let plain = packet(500, 9);
    let (sealed, tag) = seal_both(&k, 42, &plain);
    let mut opener = OpeningKey::new(&k);

    let mut bad_tag = tag;
    bad_tag[15] ^= 1;
    let mut buf = sealed.clone();
    assert_eq!(
        opener.open_in_place(42, &mut buf, &bad_tag),
        Err(Unspecified)
    );
    assert_eq!(buf, sealed, "refused packets are left as they came");

    let mut buf = sealed.clone();
    assert_eq!(opener.open_in_place(43, &mut buf, &tag), Err(Unspecified));

    for at in [0, 3, 4, 250, sealed.len() - 1] {
        let mut buf = sealed.clone();
        buf[at] ^= 0x80;
        let damaged = buf.clone();
        assert_eq!(
            opener.open_in_place(42, &mut buf, &tag),
            Err(Unspecified),
            "byte {at} flipped"
        );
        assert_eq!(buf, damaged);
    }

    // Still opens the genuine packet afterwards.
    let mut buf = sealed.clone();
    assert!(opener.open_in_place(42, &mut buf, &tag).is_ok());

    // Too short to hold a length: refused, not a panic.
    assert_eq!(
        opener.open_in_place(0, &mut [1, 2, 3], &tag),
        Err(Unspecified)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn agrees_with_aws_lc_both_ways(
        key_bytes in proptest::array::uniform32(any::<u8>()),
        key_tail in proptest::array::uniform32(any::<u8>()),
        seq in any::<u32>(),
        body in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut k = [0u8; KEY_LEN];
        k[..32].copy_from_slice(&key_bytes);
        k[32..].copy_from_slice(&key_tail);
        let mut plain = (body.len() as u32).to_be_bytes().to_vec();
        plain.extend_from_slice(&body);

        let (sealed, tag) = seal_both(&k, seq, &plain);

        // aws-lc opens ours (it is the same bytes, but say it), and we open aws-lc's.
        let mut theirs = sealed.clone();
        let length: [u8; 4] = sealed[..4].try_into().unwrap();
        prop_assert_eq!(
            reference::OpeningKey::new(&k).decrypt_packet_length(seq, length),
            OpeningKey::new(&k).decrypt_packet_length(seq, length)
        );
        let got = reference::OpeningKey::new(&k)
            .open_in_place(seq, &mut theirs, &tag)
            .expect("aws-lc opens our packet");
        prop_assert_eq!(got, &body[..]);
        let mut ours = sealed.clone();
        let got = OpeningKey::new(&k).open_in_place(seq, &mut ours, &tag).expect("we open it");
        prop_assert_eq!(got, &body[..]);
    }
}

/// Set in the child process of the test below.
const CHILD: &str = "SFTPGATE_CHACHA_TEST_NO_DEFAULT_PROVIDER";

#[test]
fn without_a_default_provider_check_reports_it_instead_of_a_key_panicking() {
    // libcrypto reads OPENSSL_CONF once per process, so the case runs in a child: this test
    // binary again, with a configuration that activates only the base provider (no
    // algorithms), as in FIPS mode without chacha20 and Poly1305.
    if std::env::var_os(CHILD).is_some() {
        let e = check().expect_err("no provider offers Poly1305");
        assert!(e.to_string().contains("Poly1305"), "{e}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("sftpgate-chacha-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("openssl.cnf");
    std::fs::write(
        &conf,
        "openssl_conf = openssl_init\n[openssl_init]\nproviders = providers\n\
         [providers]\nbase = base\n[base]\nactivate = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::without_a_default_provider_check_reports_it_instead_of_a_key_panicking",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("OPENSSL_CONF", &conf)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
