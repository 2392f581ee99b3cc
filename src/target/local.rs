//! A target in a local directory. Keys map to relative paths below the root.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{check_key, ObjectInfo, PutOutcome, Target, TargetError};

pub struct LocalTarget {
    root: PathBuf,
}

impl LocalTarget {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(&self, key: &str, source: io::Error) -> TargetError {
        TargetError::Io {
            target: self.describe(),
            key: key.to_string(),
            source,
        }
    }

    fn walk(&self, dir: &Path, rel: &str, out: &mut Vec<ObjectInfo>) -> Result<(), TargetError> {
        let entries = fs::read_dir(dir).map_err(|e| self.err(rel, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.err(rel, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Not `metadata()`: a follower lists the active segment every few milliseconds
            // (crate::file_size).
            let kind = entry.file_type().map_err(|e| self.err(&key, e))?;
            if kind.is_dir() {
                self.walk(&entry.path(), &key, out)?;
            } else {
                let size =
                    crate::file_size::len_at(&entry.path()).map_err(|e| self.err(&key, e))?;
                out.push(ObjectInfo { key, size });
            }
        }
        Ok(())
    }
}

impl Target for LocalTarget {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, TargetError> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                let e = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
                return Err(self.err("", e));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TargetError::Missing(self.describe()))
            }
            Err(e) => return Err(self.err("", e)),
        }
        let mut out = Vec::new();
        self.walk(&self.root, "", &mut out)?;
        Ok(out)
    }

    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, TargetError> {
        check_key(&self.describe(), key)?;
        let f = fs::File::open(self.root.join(key)).map_err(|e| self.err(key, e))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 16, f)))
    }

    fn get_from(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>, TargetError> {
        use std::io::Seek;
        check_key(&self.describe(), key)?;
        let mut f = fs::File::open(self.root.join(key)).map_err(|e| self.err(key, e))?;
        f.seek(io::SeekFrom::Start(offset))
            .map_err(|e| self.err(key, e))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 16, f)))
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<(), TargetError> {
        check_key(&self.describe(), key)?;
        let dest = self.root.join(key);
        if dest == path {
            return Ok(());
        }
        let dir = dest.parent().expect("keys have a directory");
        fs::create_dir_all(dir).map_err(|e| self.err(key, e))?;
        let tmp = dest.with_extension("tmp");
        fs::copy(path, &tmp).map_err(|e| self.err(key, e))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.err(key, e))?;
        fs::rename(&tmp, &dest).map_err(|e| self.err(key, e))
    }

    fn put_file_if_absent(&self, key: &str, path: &Path) -> Result<PutOutcome, TargetError> {
        check_key(&self.describe(), key)?;
        let dest = self.root.join(key);
        if dest == path {
            return Ok(PutOutcome::Exists);
        }
        let dir = dest.parent().expect("keys have a directory");
        fs::create_dir_all(dir).map_err(|e| self.err(key, e))?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            dest.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        fs::copy(path, &tmp).map_err(|e| self.err(key, e))?;
        let synced = fs::File::open(&tmp).and_then(|f| f.sync_all());
        // link(2) fails if the name exists: of two writers exactly one creates the object.
        let linked = synced.and_then(|()| fs::hard_link(&tmp, &dest));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(PutOutcome::Created),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::Exists),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), TargetError> {
        check_key(&self.describe(), key)?;
        match fs::remove_file(self.root.join(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.err(key, e)),
            _ => Ok(()),
        }
    }
}
