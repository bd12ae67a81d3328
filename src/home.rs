//! The state directory ("home") of one novabox installation.
//!
//! Everything a stack owns lives below one directory, so two homes never see each other's
//! files, sockets or pid files: tests run many side by side.

use std::io;
use std::path::{Path, PathBuf};

/// Environment variable that selects the home when `--home` is not given.
pub const HOME_ENV: &str = "NOVABOX_HOME";
/// Environment variable that moves the per-user cache (tests point it into their temp dir).
pub const CACHE_ENV: &str = "NOVABOX_CACHE_DIR";

/// The per-user cache shared by every home of this user: what is slow to make and the same
/// for all of them (the built test guest, the kernel package it comes from). `NOVABOX_CACHE_DIR`
/// wins, then `/var/cache/novabox` for root and `$XDG_CACHE_HOME/novabox` (default
/// `~/.cache/novabox`) for everyone else; `None` when there is no place for it.
pub fn user_cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/cache/novabox"));
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(Path::new(&xdg).join("novabox"));
    }
    std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| Path::new(&h).join(".cache/novabox"))
}

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error(
        "cannot find a place for the state directory: neither --home, {HOME_ENV} nor $HOME is set. \
         Pass --home DIR."
    )]
    NoDefault,
    #[error(
        "the state directory {path} cannot be created or written: {source}. \
         Choose another with --home DIR (or {HOME_ENV}), or fix its ownership and permissions."
    )]
    NotWritable { path: PathBuf, source: io::Error },
}

/// Paths inside one home. Holds no open resources; cheap to clone.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `--home` wins, then `NOVABOX_HOME`, then `/var/lib/novabox` for root and
    /// `$XDG_DATA_HOME/novabox` (default `~/.local/share/novabox`) for everyone else.
    pub fn resolve(explicit: Option<&Path>) -> Result<Home, HomeError> {
        if let Some(p) = explicit {
            return Ok(Home::at(p));
        }
        if let Some(p) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Home::at(Path::new(&p)));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return Ok(Home::at(Path::new("/var/lib/novabox")));
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(Home::at(&Path::new(&xdg).join("novabox")));
        }
        let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or(HomeError::NoDefault)?;
        Ok(Home::at(&Path::new(&home).join(".local/share/novabox")))
    }

    pub fn at(root: &Path) -> Home {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir().map(|d| d.join(root)).unwrap_or_else(|_| root.to_path_buf())
        };
        Home { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("novabox.toml")
    }
    pub fn db_file(&self) -> PathBuf {
        self.root.join("novabox.db")
    }
    pub fn secrets_file(&self) -> PathBuf {
        self.root.join("secrets.toml")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn instances_dir(&self) -> PathBuf {
        self.root.join("instances")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// True once `init` has written a config here.
    pub fn is_initialized(&self) -> bool {
        self.config_file().is_file()
    }

    /// Creates the home and its subdirectories, owner-only (secrets live here).
    pub fn create_dirs(&self) -> Result<(), HomeError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let wrap = |path: &Path, source| HomeError::NotWritable { path: path.to_path_buf(), source };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(&self.root).map_err(|e| wrap(&self.root, e))?;
        // An existing home may have looser permissions from an older version or a user's mkdir.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| wrap(&self.root, e))?;
        for dir in [self.images_dir(), self.instances_dir(), self.volumes_dir(), self.logs_dir(), self.run_dir()] {
            builder.create(&dir).map_err(|e| wrap(&dir, e))?;
        }
        self.check_writable()
    }

    /// Proves the home is writable by creating and removing a probe file, so a read-only
    /// home is reported before anything inside it is touched.
    pub fn check_writable(&self) -> Result<(), HomeError> {
        let probe = self.root.join(format!(".write-probe-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|source| HomeError::NotWritable { path: self.root.clone(), source })
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a crash or a full disk
/// never leaves a half-written file where a good one was.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_home_wins_and_lays_out_subdirs() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(t.path())).unwrap();
        home.create_dirs().unwrap();
        for d in ["images", "instances", "volumes", "logs", "run"] {
            assert!(t.path().join(d).is_dir(), "{d} missing");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.toml");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "temp file left behind");
    }
}
