//! Measuring the weights a worker serves: SHA-256 of a model file, or of a directory's
//! manifest (every file's relative path and SHA-256, sorted). The worker puts the digest
//! next to the model id in its hello and its evidence commits to the list, so a router whose
//! policy pins a model id to digests refuses a worker serving other weights under that id.
//!
//! Hashing a large model takes a while (GB/s of disk), so results are cached in a small file
//! keyed by path, size and modification time.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("measuring {path}: {detail}")]
pub struct MeasureError {
    pub path: String,
    pub detail: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> MeasureError {
    MeasureError { path: path.display().to_string(), detail: e.to_string() }
}

fn hash_file(path: &Path) -> Result<[u8; 32], MeasureError> {
    let mut f = std::fs::File::open(path).map_err(|e| err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), MeasureError> {
    for entry in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let entry = entry.map_err(|e| err(dir, e))?;
        let p = entry.path();
        let ty = entry.file_type().map_err(|e| err(&p, e))?;
        if ty.is_dir() {
            walk(&p, root, out)?;
        } else if ty.is_file() || ty.is_symlink() {
            let rel = p.strip_prefix(root).map_err(|e| err(&p, e))?.to_string_lossy().into_owned();
            out.push((rel, p));
        }
    }
    Ok(())
}

/// The digest of `path` (hex): of the file, or of the directory's manifest
/// (`<sha256 hex>  <relative path>\n` per file, sorted by path).
pub fn digest(path: &Path) -> Result<String, MeasureError> {
    let meta = std::fs::metadata(path).map_err(|e| err(path, e))?;
    if meta.is_file() {
        return Ok(hex::encode(hash_file(path)?));
    }
    let mut files = Vec::new();
    walk(path, path, &mut files)?;
    files.sort();
    let mut manifest = Sha256::new();
    for (rel, p) in files {
        manifest.update(format!("{}  {rel}\n", hex::encode(hash_file(&p)?)).as_bytes());
    }
    Ok(hex::encode(manifest.finalize()))
}

/// [`digest`], reusing the result cached in `cache` while the path's size and modification
/// time are unchanged.
pub fn digest_cached(path: &Path, cache: Option<&Path>) -> Result<String, MeasureError> {
    let key = std::fs::metadata(path).ok().map(|m| {
        let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        format!("{}|{}|{mtime}", path.display(), m.len())
    });
    let mut known: BTreeMap<String, String> = cache
        .and_then(|c| std::fs::read(c).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(d) = key.as_ref().and_then(|k| known.get(k)) {
        // A directory's key (its own mtime) does not see edits inside it: hash directories afresh.
        if path.is_file() {
            return Ok(d.clone());
        }
    }
    let d = digest(path)?;
    if let (Some(c), Some(k)) = (cache, key) {
        known.insert(k, d.clone());
        if let Ok(json) = serde_json::to_vec_pretty(&known) {
            let _ = std::fs::write(c, json);
        }
    }
    Ok(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_measured_and_any_change_shows() {
        let dir = std::env::temp_dir().join(format!("measure-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.bin"), b"weights").unwrap();
        std::fs::write(dir.join("sub/b.json"), b"{}").unwrap();
        let file = digest(&dir.join("a.bin")).unwrap();
        assert_eq!(file, hex::encode(Sha256::digest(b"weights")));
        let d1 = digest(&dir).unwrap();
        std::fs::write(dir.join("sub/b.json"), b"{ }").unwrap();
        assert_ne!(digest(&dir).unwrap(), d1, "a changed file inside changes the manifest");
        std::fs::rename(dir.join("a.bin"), dir.join("c.bin")).unwrap();
        assert_ne!(digest(&dir).unwrap(), d1, "a renamed file changes it too");
        let cache = dir.join("cache.json");
        let c = digest_cached(&dir.join("c.bin"), Some(&cache)).unwrap();
        assert_eq!(c, file);
        assert!(cache.exists());
        assert_eq!(digest_cached(&dir.join("c.bin"), Some(&cache)).unwrap(), file);
        let _ = std::fs::remove_dir_all(dir);
    }
}
