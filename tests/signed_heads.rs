//! Goal: signed heads (issue 5, point 4). With a signing key configured, the shim signs the
//! chain head before every `SegmentEnd` and when the last connection closes; `walstream verify
//! --pubkey` requires those signatures and names what is wrong (another key, a bad signature, a
//! signature over a head that is not the chain's, a missing signature); secret keys never reach
//! the stream or `walstream_status()`. Both algorithms (ed25519, secp256k1).
//!
//! Method: streams are captured through the extension (URI parameter `walstream_signing_key`,
//! small segments through `walstream_segment_bytes`), checked with the CLI, then copied and
//! damaged record by record.

mod common;
mod dropin;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use dropin::{run_ok, SQLITE3};
use walstream::record::frame::RecordWriter;
use walstream::record::pb::{record::Body, segment_end::Reason, Record};
use walstream::record::{FileKind, RecordReader};
use walstream::sign::{signed_bytes, Signer};

/// Creates a key pair with `walstream keygen`; returns (secret file, public file).
fn keygen(dir: &Path, name: &str, curve: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(name);
    let (ok, out, err) = cli(&["keygen", "--curve", curve, "--out", key.to_str().unwrap()]);
    assert!(ok, "keygen: {out} {err}");
    let public = PathBuf::from(format!("{}.pub", key.display()));
    assert!(public.exists(), "{out}");
    (key, public)
}

/// The secret key file's hex secret.
fn secret_hex(key: &Path) -> String {
    let text = fs::read_to_string(key).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("walstream-secret-key "))
        .unwrap();
    line.split_whitespace().nth(2).unwrap().to_string()
}

fn records(path: &Path) -> Vec<Record> {
    let mut r = RecordReader::new(fs::File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some((_, rec)) = r.next_record().unwrap() {
        out.push(rec);
    }
    out
}

fn rewrite(path: &Path, records: &[Record]) {
    let mut w = RecordWriter::new(Vec::new(), FileKind::Segment).unwrap();
    for r in records {
        w.write(r).unwrap();
    }
    fs::write(path, w.into_inner()).unwrap();
}

/// Segment files of a generation, in order.
fn segments(target: &Path, generation: u64) -> Vec<PathBuf> {
    let dir = target.join(format!("generations/{generation:016x}"));
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
        .collect();
    out.sort();
    out
}

fn is_sealed(path: &Path) -> bool {
    matches!(
        records(path).last().and_then(|r| r.body.as_ref()),
        Some(Body::SegmentEnd(_))
    )
}

fn has_commit(path: &Path) -> bool {
    records(path)
        .iter()
        .any(|r| matches!(r.body, Some(Body::TxnCommit(_))))
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn verify(target: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["verify", target.to_str().unwrap()];
    args.extend_from_slice(extra);
    cli(&args)
}

fn verify_ok(target: &Path, extra: &[&str]) -> String {
    let (ok, out, err) = verify(target, extra);
    assert!(ok, "verify {extra:?} must pass: {out} {err}");
    out
}

fn verify_fails(target: &Path, extra: &[&str], needles: &[&str]) -> String {
    let (ok, out, err) = verify(target, extra);
    assert!(!ok, "verify {extra:?} must fail: {out}");
    for n in needles {
        assert!(err.contains(n), "verify {extra:?} should name {n:?}: {err}");
    }
    err
}

/// A copy of a stream directory to damage.
fn copy_stream(from: &Path, to: &Path) {
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(&entry, &dest).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Writes transactions (about a page each) until at least `sealed` segments are sealed and the
/// active segment holds a transaction (so the newest head is not signed yet).
fn write_until_sealed(conn: &rusqlite::Connection, target: &Path, sealed: usize) {
    for i in 0..10_000 {
        conn.execute("INSERT INTO t(v) VALUES (randomblob(1500 + ?1 % 500))", [i])
            .unwrap();
        let segs = segments(target, 1);
        let n = segs.iter().filter(|s| is_sealed(s)).count();
        if n >= sealed && has_commit(segs.last().unwrap()) {
            return;
        }
    }
    panic!("segments never sealed");
}

struct Captured {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    target: PathBuf,
    key: PathBuf,
    public: PathBuf,
}

/// A stream of one database captured with a signing key and 8 KiB segments, closed (so its
/// newest head is signed).
fn captured(curve: &str) -> Captured {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (key, public) = keygen(&dir, "signing.key", curve);
    let db = dir.join("app.db");
    let target = PathBuf::from(format!("{}-walstream", db.display()));
    let params = format!(
        "&walstream_signing_key={}&walstream_segment_bytes=8K",
        key.display()
    );
    let conn = open_captured(&db, &params);
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    write_until_sealed(&conn, &target, 4);

    // Status names the public key, never the secret.
    let st = status(&conn);
    assert_eq!(st["signing"]["algorithm"], curve, "{st}");
    let public_hex = fs::read_to_string(&public)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    assert_eq!(st["signing"]["public_key"], public_hex.as_str(), "{st}");
    assert!(
        !st.to_string().contains(&secret_hex(&key)),
        "secret key in status: {st}"
    );

    // Live: the active segment's newest head is not signed until it is sealed or closed.
    let err = verify_fails(
        &target,
        &["--pubkey", public.to_str().unwrap()],
        &["missing signature", "not covered"],
    );
    assert!(err.contains("generation 1"), "{err}");
    verify_ok(
        &target,
        &[
            "--pubkey",
            public.to_str().unwrap(),
            "--allow-unsigned-tail",
        ],
    );

    drop(conn); // the last connection closes: the head is signed
    Captured {
        _dir: tmp,
        dir,
        target,
        key,
        public,
    }
}

fn signed_stream(curve: &str) {
    let c = captured(curve);
    let pubkey = c.public.to_str().unwrap();

    // Readers that do not check signatures skip them.
    verify_ok(&c.target, &[]);
    let out = verify_ok(&c.target, &["--pubkey", pubkey]);
    assert!(out.contains("signatures:"), "{out}");

    // Every sealed segment ends with a signature over its last head, then SegmentEnd.
    let segs = segments(&c.target, 1);
    let sealed: Vec<&PathBuf> = segs.iter().filter(|s| is_sealed(s)).collect();
    assert!(sealed.len() >= 4, "several segments sealed: {segs:?}");
    let signer = Signer::load(&c.key).unwrap();
    for seg in &sealed {
        let recs = records(seg);
        let n = recs.len();
        let (Some(Body::HeadSignature(sig)), Some(Body::SegmentEnd(end))) =
            (&recs[n - 2].body, &recs[n - 1].body)
        else {
            panic!(
                "{} does not end with HeadSignature, SegmentEnd: {:?}",
                name(seg),
                &recs[n - 2..]
            );
        };
        assert_eq!(end.reason(), Reason::Rolled);
        assert_eq!(sig.seq + 1, end.next_seq, "{}", name(seg));
        assert_eq!(sig.public_key, signer.public_key().bytes());
        let last_commit = recs.iter().rev().find_map(|r| match &r.body {
            Some(Body::TxnCommit(c)) => Some(c.clone()),
            _ => None,
        });
        assert_eq!(
            Some(sig.head_hash.clone()),
            last_commit.map(|c| c.hash),
            "{}",
            name(seg)
        );
    }
    // The close signed the newest head.
    let last = segs.last().unwrap();
    assert!(
        records(last)
            .iter()
            .any(|r| matches!(r.body, Some(Body::HeadSignature(_)))),
        "the last segment holds the close signature"
    );

    // `inspect` prints signatures.
    let (ok, out, err) = cli(&["inspect", sealed[0].to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("head signature: generation 1 txn") && out.contains(curve),
        "{out}"
    );

    // Secret keys are never written into the stream: neither the raw secret nor its hex.
    let secret = secret_hex(&c.key);
    let raw: Vec<u8> = (0..secret.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret[i..i + 2], 16).unwrap())
        .collect();
    let public_raw = signer.public_key().bytes().to_vec();
    let mut public_seen = false;
    for file in walk(&c.target) {
        let bytes = fs::read(&file).unwrap();
        assert!(
            !contains(&bytes, &raw),
            "secret key bytes in {}",
            file.display()
        );
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "secret key hex in {}",
            file.display()
        );
        public_seen |= contains(&bytes, &public_raw);
    }
    assert!(public_seen, "the public key is in the stream");

    let first_sealed = name(sealed[0]);

    // Another key's public key: named, with the first signed segment.
    let (_, other_pub) = keygen(&c.dir, "other.key", curve);
    verify_fails(
        &c.target,
        &["--pubkey", other_pub.to_str().unwrap()],
        &["signed by another key", "generation 1", &first_sealed],
    );
    // ... and a key of the other algorithm.
    let other_curve = if curve == "ed25519" {
        "secp256k1"
    } else {
        "ed25519"
    };
    let (_, cross_pub) = keygen(&c.dir, "cross.key", other_curve);
    verify_fails(
        &c.target,
        &["--pubkey", cross_pub.to_str().unwrap()],
        &["signed by another key", &first_sealed],
    );
    // Either of two keys may have signed.
    verify_ok(
        &c.target,
        &["--pubkey", other_pub.to_str().unwrap(), "--pubkey", pubkey],
    );

    let damaged = |label: &str| {
        let to = c.dir.join(label);
        copy_stream(&c.target, &to);
        let segs = segments(&to, 1);
        let sealed: Vec<PathBuf> = segs.into_iter().filter(|s| is_sealed(s)).collect();
        (to, sealed[1].clone())
    };
    let sig_index = |recs: &[Record]| {
        recs.iter()
            .rposition(|r| matches!(r.body, Some(Body::HeadSignature(_))))
            .unwrap()
    };

    // A tampered signature.
    let (to, seg) = damaged("tampered");
    let mut recs = records(&seg);
    let i = sig_index(&recs);
    let Some(Body::HeadSignature(sig)) = &mut recs[i].body else {
        unreachable!()
    };
    sig.signature[5] ^= 0x20;
    let txn = sig.seq;
    rewrite(&seg, &recs);
    verify_ok(&to, &[]); // not part of the hash chain
    verify_fails(
        &to,
        &["--pubkey", pubkey],
        &["bad signature", &name(&seg), &format!("txn {txn}")],
    );

    // A valid signature by the right key over a head that is not the chain's here.
    let (to, seg) = damaged("wrong-head");
    let mut recs = records(&seg);
    let i = sig_index(&recs);
    let Some(Body::HeadSignature(sig)) = &mut recs[i].body else {
        unreachable!()
    };
    let forged = signer.sign_head(1, sig.seq - 1, &[0x5a; 32]);
    *sig = forged;
    rewrite(&seg, &recs);
    verify_fails(
        &to,
        &["--pubkey", pubkey],
        &["does not match the chain", &name(&seg)],
    );
    // ... or the right head with a changed claim of where it is.
    let (to, seg) = damaged("moved-claim");
    let mut recs = records(&seg);
    let i = sig_index(&recs);
    let Some(Body::HeadSignature(sig)) = &mut recs[i].body else {
        unreachable!()
    };
    sig.head_hash[0] ^= 1;
    sig.signature = signer
        .sign(&signed_bytes(
            1,
            sig.seq,
            sig.head_hash.as_slice().try_into().unwrap(),
        ))
        .to_vec();
    rewrite(&seg, &recs);
    verify_fails(&to, &["--pubkey", pubkey], &["does not match the chain"]);

    // A missing signature before a SegmentEnd.
    let (to, seg) = damaged("missing");
    let mut recs = records(&seg);
    let i = sig_index(&recs);
    recs.remove(i);
    rewrite(&seg, &recs);
    verify_ok(&to, &[]);
    verify_fails(
        &to,
        &["--pubkey", pubkey],
        &["missing signature", &name(&seg)],
    );

    // A missing close signature: the newest head is then unsigned.
    let to = c.dir.join("no-close-signature");
    copy_stream(&c.target, &to);
    let last = segments(&to, 1).pop().unwrap();
    let recs: Vec<Record> = records(&last)
        .into_iter()
        .filter(|r| !matches!(r.body, Some(Body::HeadSignature(_))))
        .collect();
    rewrite(&last, &recs);
    verify_fails(&to, &["--pubkey", pubkey], &["not covered"]);
    verify_ok(&to, &["--pubkey", pubkey, "--allow-unsigned-tail"]);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn ed25519_signed_stream_verifies_and_damage_is_named() {
    signed_stream("ed25519");
}

#[test]
fn secp256k1_signed_stream_verifies_and_damage_is_named() {
    signed_stream("secp256k1");
}

#[test]
fn keygen_writes_0600_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k", "secp256k1");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = fs::read_to_string(&public).unwrap();
    assert!(
        text.starts_with("walstream-public-key secp256k1 "),
        "{text}"
    );
    let before = fs::read(&key).unwrap();
    let (ok, _, err) = cli(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!ok && err.contains("already exists"), "{err}");
    assert_eq!(fs::read(&key).unwrap(), before);
    // A public key where the secret is expected (and the other way round) is named as such.
    let (ok, _, err) = cli(&[
        "verify",
        dir.path().to_str().unwrap(),
        "--pubkey",
        key.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("secret key file"), "{err}");
}

/// A new generation ends the previous one with a signed, sealed segment; the environment
/// variable names the key when the URI does not, and the URI parameter wins over it.
#[test]
fn environment_key_new_generation_and_uri_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let (env_key, env_pub) = keygen(dir.path(), "env.key", "ed25519");
    let (uri_key, uri_pub) = keygen(dir.path(), "uri.key", "secp256k1");
    let db = dir.path().join("shell.db");
    let target = PathBuf::from(format!("{}-walstream", db.display()));
    let shell = |uri_params: &str, sql: &str| {
        let script = format!(
            ".load {}\n.open file:{}?vfs=walstream{uri_params}\nPRAGMA journal_mode=WAL;\n{sql}\nSELECT walstream_status();\n",
            ext_path().display(),
            db.display()
        );
        run_ok(
            Command::new(SQLITE3)
                .env("WALSTREAM_SIGNING_KEY", &env_key)
                .env("WALSTREAM_SEGMENT_BYTES", "8K"),
            &script,
        )
    };
    let inserts = "CREATE TABLE IF NOT EXISTS t(v);\n".to_string()
        + &"INSERT INTO t VALUES (randomblob(3000));\n".repeat(12);
    let out = shell("", &inserts);
    assert!(out.contains("\"algorithm\":\"ed25519\""), "{out}");
    assert!(!out.contains(&secret_hex(&env_key)), "{out}");
    verify_ok(&target, &["--pubkey", env_pub.to_str().unwrap()]);
    assert!(segments(&target, 1).len() >= 3, "segments rolled at 8K");

    // The database changes without walstream: the next capture starts generation 2, ending
    // generation 1 (its last segment was signed at close already: no second signature).
    let plain = open_plain(&db);
    plain.execute("INSERT INTO t VALUES (1)", []).unwrap();
    drop(plain);
    shell("", &inserts);
    let g1_last = segments(&target, 1).pop().unwrap();
    let recs = records(&g1_last);
    assert!(
        matches!(recs.last().unwrap().body, Some(Body::SegmentEnd(ref e)) if e.reason() == Reason::NewGeneration)
    );
    let sigs = recs
        .iter()
        .filter(|r| matches!(r.body, Some(Body::HeadSignature(_))))
        .count();
    assert_eq!(sigs, 1, "{}", name(&g1_last));
    verify_ok(&target, &["--pubkey", env_pub.to_str().unwrap()]);

    // The URI parameter wins over the environment: later heads are signed with its key, so
    // the stream verifies only with both keys.
    let params = format!("&walstream_signing_key={}", uri_key.display());
    let out = shell(&params, &inserts);
    assert!(out.contains("\"algorithm\":\"secp256k1\""), "{out}");
    verify_fails(
        &target,
        &["--pubkey", env_pub.to_str().unwrap()],
        &["signed by another key"],
    );
    verify_fails(
        &target,
        &["--pubkey", uri_pub.to_str().unwrap()],
        &["signed by another key"],
    );
    verify_ok(
        &target,
        &[
            "--pubkey",
            env_pub.to_str().unwrap(),
            "--pubkey",
            uri_pub.to_str().unwrap(),
        ],
    );
}

#[test]
fn unusable_key_file_fails_the_open_without_quoting_it() {
    load_extension();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bad.key");
    fs::write(&key, "walstream-secret-key ed448 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
    let db = dir.path().join("a.db");
    let uri = format!(
        "file:{}?vfs=walstream&walstream_signing_key={}",
        db.display(),
        key.display()
    );
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let result = rusqlite::Connection::open_with_flags(uri, flags).and_then(|c| {
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .map(|_| c)
    });
    assert!(result.is_err(), "the open must fail");
    let other = rusqlite::Connection::open_in_memory().unwrap();
    let status: String = other
        .query_row("SELECT walstream_status()", [], |r| r.get(0))
        .unwrap();
    assert!(
        status.contains("bad.key") && status.contains("unknown algorithm"),
        "{status}"
    );
    assert!(
        !status.contains("00112233"),
        "the key file's content is never quoted: {status}"
    );
    assert!(!dir.path().join("a.db-walstream").exists());
}

/// S3 targets: the background shipper seals segments too, and signs them with the capture's
/// key; the shipped stream verifies with the public key, and the bucket never holds the secret.
#[test]
fn s3_shipper_signs_the_segments_it_seals() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "s3.key", "ed25519");
    let db = dir.path().join("app.db");
    let uri = format!("s3://{}/{}", env.bucket, unique_prefix("signed-heads"));
    let conn = open_captured(
        &db,
        &format!(
            "&walstream_target={uri}&walstream_signing_key={}",
            key.display()
        ),
    );
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(v);")
        .unwrap();
    let shipped = |conn: &rusqlite::Connection| {
        let seq = status(conn)["last_seq"].as_u64().unwrap();
        poll("shipping", std::time::Duration::from_secs(60), || {
            let s = status(conn);
            if s["shipped_seq"].as_u64() == Some(seq) {
                Ok(())
            } else {
                Err(s.to_string())
            }
        });
    };
    for i in 0..20 {
        conn.execute("INSERT INTO t VALUES (randomblob(1000))", [])
            .unwrap();
        if i % 4 == 3 {
            shipped(&conn); // the shipper sealed the active segment to ship it
        }
    }
    shipped(&conn);
    let (ok, out, err) = cli_at(
        &env.endpoint,
        &["verify", &uri, "--pubkey", public.to_str().unwrap()],
    );
    assert!(ok, "shipped stream verifies with the key: {out} {err}");
    let (_, other_pub) = keygen(dir.path(), "other.key", "ed25519");
    let (ok, _, err) = cli_at(
        &env.endpoint,
        &["verify", &uri, "--pubkey", other_pub.to_str().unwrap()],
    );
    assert!(
        !ok && err.contains("signed by another key") && err.contains(".wseg"),
        "{err}"
    );

    let target =
        walstream::target::open(&walstream::target::TargetSpec::parse(&uri).unwrap()).unwrap();
    let secret = secret_hex(&key);
    let raw: Vec<u8> = (0..secret.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret[i..i + 2], 16).unwrap())
        .collect();
    let mut sealed = 0;
    for object in target.list().unwrap() {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut target.get(&object.key).unwrap(), &mut bytes).unwrap();
        assert!(
            !contains(&bytes, &raw) && !contains(&bytes, secret.as_bytes()),
            "secret in {}",
            object.key
        );
        if object.key.ends_with(".wseg") {
            let mut r = RecordReader::new(&bytes[..]).unwrap();
            let mut recs = Vec::new();
            while let Some((_, rec)) = r.next_record().unwrap() {
                recs.push(rec.body.unwrap());
            }
            if let [.., Body::HeadSignature(_), Body::SegmentEnd(_)] = recs.as_slice() {
                sealed += 1;
            } else {
                assert!(
                    !matches!(recs.last(), Some(Body::SegmentEnd(_))),
                    "{}: sealed without a signature",
                    object.key
                );
            }
        }
    }
    assert!(
        sealed >= 3,
        "the shipper sealed and signed segments: {sealed}"
    );
    drop(conn);
}
