//! Goal: every target (a local directory, an S3 prefix on a real S3-compatible server) has the
//! same semantics, so that readers, the shipper and retention behave alike on both.
//!
//! Method: one suite of checks runs over a `LocalTarget` in a temporary directory and an
//! `S3Target` under a fresh prefix of the test server (SeaweedFS started by `make test`):
//! list/get/put/delete, conditional puts, content hashes, missing objects, key safety, and a
//! large object (multipart upload, streamed back).

mod common;

use std::io::Read;
use std::path::Path;

use common::*;
use walstream::target::{self, PutOutcome, Target, TargetSpec};

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn read_all(t: &dyn Target, key: &str) -> Vec<u8> {
    let mut v = Vec::new();
    t.get(key).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn keys(t: &dyn Target) -> Vec<(String, u64)> {
    let mut v: Vec<_> = t
        .list()
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    v.sort();
    v
}

fn suite(t: &dyn Target, scratch: &Path) {
    let a = scratch.join("a");
    let b = scratch.join("b");
    write(&a, b"first object");
    write(&b, b"second, different object");
    assert_eq!(keys(t), vec![], "a fresh root lists nothing");

    // put / get / list
    let k1 = "generations/0000000000000001/snapshot.wsnap";
    let k2 = "generations/0000000000000001/0000000000000001.wseg";
    t.put_file(k1, &a).unwrap();
    t.put_file(k2, &b).unwrap();
    assert_eq!(read_all(t, k1), b"first object");
    assert_eq!(keys(t), vec![(k2.to_string(), 24), (k1.to_string(), 12)]);
    // put_file replaces
    t.put_file(k1, &b).unwrap();
    assert_eq!(read_all(t, k1), b"second, different object");

    // conditional puts: exactly one creates; an existing object is left alone
    let k3 = "generations/0000000000000002/snapshot.wsnap";
    assert_eq!(t.put_file_if_absent(k3, &a).unwrap(), PutOutcome::Created);
    assert_eq!(t.put_file_if_absent(k3, &b).unwrap(), PutOutcome::Exists);
    assert_eq!(read_all(t, k3), b"first object");

    // content hashes identify an object's bytes
    let hash_a = blake3::hash(b"first object").to_hex().to_string();
    assert_eq!(t.content_hash(k3).unwrap(), hash_a);
    assert_eq!(
        t.content_hash(k1).unwrap(),
        blake3::hash(b"second, different object")
            .to_hex()
            .to_string()
    );

    // listing after a key: the keys that sort after it, whether or not it exists
    let after = |k: &str| {
        let mut v: Vec<String> = t
            .list_after(k)
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        v.sort();
        v
    };
    let owned = |v: &[&str]| v.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(after(""), owned(&[k2, k1, k3]));
    assert_eq!(after(k2), owned(&[k1, k3]));
    assert_eq!(
        after("generations/0000000000000001/0000000000000001"),
        owned(&[k2, k1, k3]),
        "a key's prefix sorts before it"
    );
    assert_eq!(after(k1), owned(&[k3]));
    assert_eq!(after(k3), owned(&[]));

    // reading from an offset: the rest of the object, nothing at or past its end
    let from = |key: &str, offset: u64| {
        let mut v = Vec::new();
        t.get_from(key, offset)
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    assert_eq!(from(k1, 0), b"second, different object");
    assert_eq!(from(k1, 8), b"different object");
    assert_eq!(from(k1, 23), b"t");
    assert_eq!(from(k1, 24), b"");
    assert_eq!(from(k1, 1000), b"");

    // missing objects
    let missing = "generations/0000000000000009/snapshot.wsnap";
    let err = t.get(missing).map(|_| ()).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let err = t.get_from(missing, 5).map(|_| ()).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(t.content_hash(missing).unwrap_err().is_not_found());
    t.delete(missing).unwrap();

    // delete
    t.delete(k2).unwrap();
    assert!(t.get(k2).map(|_| ()).unwrap_err().is_not_found());
    assert_eq!(keys(t).len(), 2);

    // key safety: nothing outside the root, on every operation
    for bad in [
        "",
        "/abs",
        "../escape",
        "generations/../../x",
        "a//b",
        "a/./b",
        "trailing/",
        "nul\0byte",
        "back\\slash",
    ] {
        let msg = t.put_file(bad, &a).unwrap_err().to_string();
        assert!(msg.contains("refusing key"), "{bad:?}: {msg}");
        assert!(t.put_file_if_absent(bad, &a).is_err(), "{bad:?}");
        assert!(t.get(bad).is_err(), "{bad:?}");
        assert!(t.delete(bad).is_err(), "{bad:?}");
    }

    // a large object: multipart on S3 (threshold 5 MiB here), streamed back
    let big = scratch.join("big");
    let data: Vec<u8> = (0..(13u32 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
        .collect();
    write(&big, &data);
    let kb = "generations/0000000000000003/snapshot.wsnap";
    assert_eq!(t.put_file_if_absent(kb, &big).unwrap(), PutOutcome::Created);
    assert_eq!(
        t.put_file_if_absent(kb, &a).unwrap(),
        PutOutcome::Exists,
        "multipart uploads are conditional too"
    );
    let mut reader = t.get(kb).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 100_000];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        hasher.update(&buf[..n]);
    }
    assert_eq!(total, data.len());
    assert_eq!(hasher.finalize(), blake3::hash(&data));
    assert_eq!(
        t.content_hash(kb).unwrap(),
        blake3::hash(&data).to_hex().to_string()
    );

    for (k, _) in keys(t) {
        t.delete(&k).unwrap();
    }
    assert_eq!(keys(t), vec![]);
}

fn init_env() {
    // Set before any S3 target exists in this process: the multipart threshold is read at open.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("WALSTREAM_S3_MULTIPART_BYTES", "5M"));
}

#[test]
fn local_directory_target() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("stream");
    std::fs::create_dir(&root).unwrap();
    let t = target::open(&TargetSpec::Local(root.clone())).unwrap();
    suite(t.as_ref(), dir.path());
    // A missing root is reported as missing.
    let gone = target::open(&TargetSpec::Local(dir.path().join("nope"))).unwrap();
    assert!(matches!(gone.list(), Err(target::TargetError::Missing(_))));
}

#[test]
fn s3_target() {
    init_env();
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = TargetSpec::parse(&format!(
        "s3://{}/{}",
        env.bucket,
        unique_prefix("conformance")
    ))
    .unwrap();
    let t = target::open(&spec).unwrap();
    suite(t.as_ref(), dir.path());
}

#[test]
fn s3_prefix_is_a_boundary() {
    init_env();
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = unique_prefix("boundary");
    let a = target::open(&TargetSpec::parse(&format!("s3://{}/{base}/a", env.bucket)).unwrap())
        .unwrap();
    let ab = target::open(&TargetSpec::parse(&format!("s3://{}/{base}/ab", env.bucket)).unwrap())
        .unwrap();
    let f = dir.path().join("f");
    write(&f, b"x");
    a.put_file("generations/0000000000000001/snapshot.wsnap", &f)
        .unwrap();
    assert_eq!(
        ab.list().unwrap(),
        vec![],
        "prefix a/ does not see a sibling prefix ab/"
    );
    assert_eq!(a.list().unwrap().len(), 1);
}

#[test]
fn s3_missing_bucket_and_bad_endpoint_are_clear_errors() {
    init_env();
    let Some(env) = s3_env() else { return };
    let t = target::open(&TargetSpec::parse("s3://walstream-no-such-bucket/p").unwrap()).unwrap();
    let msg = t.list().unwrap_err().to_string();
    assert!(msg.contains("does not exist"), "{msg}");
    let t = walstream::target::s3::S3Target::open_at(
        &env.bucket,
        "p",
        Some("http://127.0.0.1:1".into()),
    )
    .unwrap();
    let msg = t.list().unwrap_err().to_string();
    assert!(msg.contains("cannot reach the S3 endpoint"), "{msg}");
}
