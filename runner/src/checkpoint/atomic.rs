//! Replacing a directory atomically: every file is written into a fresh
//! directory beside the destination (fsynced), swapped with an old
//! directory in one step where the file system can (else the old one is
//! moved aside and the new one renamed into place, the old one moved back
//! if that fails), the parent fsynced, and only then the old one deleted.
//! A crash at any point leaves either the old directory or the new one
//! whole.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Component, Path, PathBuf};

use log::warn;
use safetensors::tensor::View;
use serde_json::json;

use crate::error::Error;
use crate::metrics::mib;
use crate::outputs::{self, sync_dir};

/// A destination directory that may only ever hold `files`, and, when it
/// holds any, `required` among them.
pub struct Destination<'a> {
    dir: PathBuf,
    files: &'a [&'a str],
    required: &'a [&'a str],
}

impl<'a> Destination<'a> {
    /// `dir` as the path its components spell (`ckpt/.` is `ckpt`: the
    /// final rename needs the directory's own name), its parent resolved
    /// where it climbs with `..`: the parent of `ckpt/../ckpt` is
    /// `ckpt/..`, which no longer leads anywhere once the save has moved
    /// `ckpt` aside.
    pub fn new(dir: &Path, files: &'a [&'a str]) -> Destination<'a> {
        let dir: PathBuf = dir.components().collect();
        let parent = outputs::parent(&dir);
        let climbs = parent.components().any(|c| c == Component::ParentDir);
        let resolved = climbs.then(|| fs::canonicalize(parent).ok()).flatten();
        let dir = match (resolved, dir.file_name()) {
            (Some(parent), Some(name)) => parent.join(name),
            // A parent that does not resolve: the checks say why.
            _ => dir,
        };
        Destination {
            dir,
            files,
            required: &[],
        }
    }

    /// The same destination, replaced only where it holds all of
    /// `required` (files every save writes): a folder with a file of that
    /// name alone, such as a `config.json` of the user's, is not ours.
    pub fn requiring(self, required: &'a [&'a str]) -> Destination<'a> {
        Destination { required, ..self }
    }

    /// Refuses a destination that cannot be saved to, before any long
    /// work: one that exists but is not such a directory (a file, or a
    /// directory holding anything else), since saving replaces it whole;
    /// one that is missing or empty while a stopped save's previous copy
    /// waits beside it to be restored (saving would delete that copy); or
    /// one whose parent is missing or not writable (a staging directory is
    /// created there and removed again to find out).
    pub fn check(&self) -> Result<(), Error> {
        let _saving = self.lock_parent();
        self.check_locked()
    }

    /// Holds the parent directory's lock, which every check and save of a
    /// destination in it takes: a run checking its destination then never
    /// removes the staging directory of another run's save in progress, and
    /// two runs saving to one destination (even under one process id, as
    /// two containers' first processes have) take turns. `None` where the
    /// parent cannot be opened (the checks say why) or locked (a file
    /// system without locks: saving goes on unguarded, as before).
    fn lock_parent(&self) -> Option<fs::File> {
        let (parent, _) = self.parent_and_name().ok()?;
        // Other systems cannot open a directory as a file.
        #[cfg(unix)]
        {
            let parent = fs::File::open(parent).ok()?;
            return parent.lock().is_ok().then_some(parent);
        }
        #[allow(unreachable_code)]
        None
    }

    /// [`Destination::check`] with the parent's lock held.
    fn check_locked(&self) -> Result<(), Error> {
        let dir = &self.dir;
        let empty = match fs::symlink_metadata(dir) {
            Ok(meta) => self.check_existing(meta)?,
            // (A parent that is a file: the check below says so.)
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => true,
            Err(e) => return Err(Error::io(dir, e)),
        };
        // Where no checkpoint is in place, a previous one moved aside is
        // the copy to restore, which a save would delete as superseded.
        if let Some(old) = self.moved_aside().filter(|_| empty) {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "a save that was stopped left the previous checkpoint at {}: rename it to {} (or remove it) before saving here",
                    old.display(),
                    dir.display()
                ),
            ));
        }
        let (parent, name) = self.parent_and_name()?;
        if !parent.is_dir() {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "its parent {} does not exist or is not a directory",
                    parent.display()
                ),
            ));
        }
        // A staging directory a killed save left (possibly under this very
        // process id) is never the only copy of anything; nor, with a
        // checkpoint in place, is a copy moved aside by a save killed after
        // its second rename (under this process id, as a container's first
        // process always has, it would stop this save's own move).
        // One that cannot be removed (a read-only copy of the user's, moved
        // aside) is in no save's way but its own process id's, checked
        // next. (A save warns of copies moved aside once it is done.)
        let mut stuck = self.remove_temporary(parent, &staging_prefix(&name));
        for (path, e) in &stuck {
            warn!(
                "{}: left by a stopped save, cannot be removed ({e}); remove it yourself",
                path.display()
            );
        }
        if !empty {
            stuck.extend(self.remove_temporary(parent, &aside_prefix(&name)));
        }
        // What is left under this process's own names is not a save's: it
        // would stop this one's staging or its move after the whole run.
        let pid = std::process::id();
        for prefix in [staging_prefix(&name), aside_prefix(&name)] {
            let own = parent.join(format!("{prefix}{pid}"));
            if fs::symlink_metadata(&own).is_err() {
                continue;
            }
            let why = match stuck.iter().find(|(path, _)| *path == own) {
                Some((_, e)) => format!(
                    "a copy an earlier save left there cannot be removed ({e}); remove it yourself"
                ),
                None => "it holds more than a checkpoint's files; move it elsewhere".into(),
            };
            return Err(Error::checkpoint(
                dir,
                format!("{} is in the way of saving: {why}", own.display()),
            ));
        }
        let probe = staging_dir(parent, &name);
        fs::create_dir(&probe).map_err(|e| {
            Error::checkpoint(dir, format!("cannot write in {}: {e}", parent.display()))
        })?;
        fs::remove_dir(&probe).map_err(|e| Error::io(&probe, e))
    }

    /// Refuses an existing `dir` that is not a directory of the files;
    /// returns whether it is empty.
    fn check_existing(&self, meta: fs::Metadata) -> Result<bool, Error> {
        let dir = &self.dir;
        if meta.is_symlink() {
            return Err(Error::checkpoint(
                dir,
                "is a symbolic link, which saving would replace by a folder; give the folder it points to",
            ));
        }
        if !meta.is_dir() {
            return Err(Error::checkpoint(
                dir,
                "exists and is not a directory, so it is not a checkpoint to replace; choose another path",
            ));
        }
        let mut empty = true;
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            empty = false;
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // A checkpoint's names that are not files (a folder called
            // `config.json`) are someone else's. (A link to a file, as a
            // Hugging Face snapshot holds, is a file here.)
            let is_file = fs::metadata(entry.path()).is_ok_and(|m| m.is_file());
            if !self.files.contains(&name.as_ref()) || !is_file {
                let what = if is_file { "," } else { ", not a file," };
                return Err(Error::checkpoint(
                    dir,
                    format!(
                        "holds `{name}`{what} so it is not a checkpoint to replace; choose another path"
                    ),
                ));
            }
        }
        let missing = self.required.iter().find(|name| !dir.join(name).is_file());
        if let Some(name) = missing.filter(|_| !empty) {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "has no `{name}`, so it is not a checkpoint to replace; choose another path"
                ),
            ));
        }
        Ok(empty)
    }

    /// Refuses a save of `bytes` where the destination's file system has
    /// less room than that: the new directory is written whole beside the
    /// old one, which is deleted only once the new one is in place. Passes
    /// where the free space cannot be read (another OS, a missing parent:
    /// [`Destination::check`] reports that).
    pub fn check_room(&self, bytes: u64) -> Result<(), Error> {
        let (parent, _) = self.parent_and_name()?;
        match outputs::lacks_room(parent, bytes) {
            Some(lack) => Err(Error::checkpoint(
                &self.dir,
                format!(
                    "saving it takes about {:.1} MiB, but {lack}",
                    mib(bytes as f64)
                ),
            )),
            None => Ok(()),
        }
    }

    /// The previous directory a save moved aside and, killed between its
    /// two renames, never replaced: where the destination is missing, the
    /// copy to restore.
    pub fn moved_aside(&self) -> Option<PathBuf> {
        let (parent, name) = self.parent_and_name().ok()?;
        let prefix = aside_prefix(&name);
        fs::read_dir(parent)
            .ok()?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| self.is_temporary(path, &prefix))
    }

    /// Whether `path` is `prefix` + a process id (one of the temporary
    /// names of [`Destination::replace_with`]) and holds nothing but the
    /// destination's files.
    fn is_temporary(&self, path: &Path, prefix: &str) -> bool {
        let pid = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix(prefix));
        pid.is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            && holds_only(path, self.files)
    }

    /// Removes the directories in `parent` that [`Destination::is_temporary`]
    /// names, file by checked file name and then the emptied folder, so
    /// nothing else is removed (a folder of the user's under such a name
    /// stays). Returns those it could not remove (one that gains a file
    /// meanwhile, or is read-only), each with why, having tried them all.
    fn remove_temporary(&self, parent: &Path, prefix: &str) -> Vec<(PathBuf, std::io::Error)> {
        let entries = match fs::read_dir(parent) {
            Ok(entries) => entries,
            Err(e) => return vec![(parent.into(), e)],
        };
        let mut stuck = Vec::new();
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    stuck.push((parent.into(), e));
                    continue;
                }
            };
            if !self.is_temporary(&path, prefix) {
                continue;
            }
            let removed = self
                .files
                .iter()
                .try_for_each(|file| match fs::remove_file(path.join(file)) {
                    Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .and_then(|()| fs::remove_dir(&path));
            if let Err(e) = removed {
                stuck.push((path, e));
            }
        }
        stuck
    }

    fn parent_and_name(&self) -> Result<(&Path, String), Error> {
        let dir = &self.dir;
        let name = dir
            .file_name()
            .ok_or_else(|| {
                Error::checkpoint(
                    dir,
                    "names no folder: give the checkpoint folder by its name",
                )
            })?
            .to_string_lossy()
            .into_owned();
        Ok((outputs::parent(dir), name))
    }

    /// Calls `write(staging)` to fill a fresh directory, then swaps it in
    /// for the destination.
    pub fn replace_with(
        &self,
        write: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let _saving = self.lock_parent();
        self.check_locked()?;
        self.install_locked(write)
    }

    /// [`Destination::replace_with`], unless, under the parent's lock, the
    /// destination is `changed` (another run saved there) or no longer
    /// takes a save (a user's files are there now): then into the first
    /// free `DIR.N` beside it, with a warning, so that neither the work
    /// nor what is there is lost. Returns where it saved.
    pub fn replace_or_save_beside(
        &self,
        changed: impl FnOnce(&Path) -> bool,
        write: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<PathBuf, Error> {
        let _saving = self.lock_parent();
        let (why, own) = match changed(&self.dir) {
            true => (
                "another run saved there while this one ran".to_string(),
                None,
            ),
            false => match self.check_locked() {
                Ok(()) => {
                    self.install_locked(write)?;
                    return Ok(self.dir.clone());
                }
                Err(e) => (e.to_string(), Some(e)),
            },
        };
        let beside = Destination {
            dir: free_sibling(&self.dir),
            files: self.files,
            required: self.required,
        };
        if let Err(e) = beside.check_locked() {
            // Their parent gone: the folder asked for says it best.
            if let Some(own) = own.filter(|_| !outputs::parent(&self.dir).is_dir()) {
                return Err(own);
            }
            return Err(Error::checkpoint(
                &self.dir,
                format!("not saving there ({why}), nor beside it: {e}"),
            ));
        }
        warn!(
            "not saving to {} ({why}): saving to {} instead",
            self.dir.display(),
            beside.dir.display()
        );
        beside.install_locked(write)?;
        Ok(beside.dir)
    }

    /// The body of a save, with the parent's lock held and the
    /// destination checked.
    fn install_locked(&self, write: impl FnOnce(&Path) -> Result<(), Error>) -> Result<(), Error> {
        let (parent, name) = self.parent_and_name()?;
        let tmp = staging_dir(parent, &name);
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let old_prefix = aside_prefix(&name);
        let old = parent.join(format!("{old_prefix}{}", std::process::id()));
        // A failure to write names the destination, not the staging
        // directory it happened in (removed again here).
        let written = write(&tmp).and_then(|()| sync_dir(&tmp)).map_err(|e| {
            Error::checkpoint(
                &self.dir,
                format!("could not be written, so nothing there changed: {e}"),
            )
        });
        if let Err(e) = written.and_then(|()| install(&tmp, &self.dir, &old)) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        sync_dir(parent)?;
        // The new directory is in place, so every copy moved aside (this
        // save's, or one a crash left between two renames) is superseded.
        // The save has succeeded: failing to delete them is only worth a
        // warning.
        for (path, e) in self.remove_temporary(parent, &old_prefix) {
            warn!(
                "could not remove the previous checkpoint {} ({e}); remove it yourself",
                path.display()
            );
        }
        Ok(())
    }
}

/// The first of `DIR.1`, `DIR.2`, ... beside `dir` that does not exist.
fn free_sibling(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    (1..)
        .map(|i| dir.with_file_name(format!("{name}.{i}")))
        .find(|path| fs::symlink_metadata(path).is_err())
        .expect("some DIR.N is free")
}

/// `.NAME.tmp-`: the prefix of the staging directories of `NAME`. Beside
/// the destination, so the final renames stay on one file system.
fn staging_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// `.NAME.old-`: the prefix of the name a previous `NAME` is moved aside
/// to while the new one is renamed into place.
fn aside_prefix(name: &str) -> String {
    format!(".{name}.old-")
}

fn staging_dir(parent: &Path, name: &str) -> PathBuf {
    parent.join(format!("{}{}", staging_prefix(name), std::process::id()))
}

/// Renames the complete directory `staged` to `dir`. An existing `dir` is
/// swapped with it in one step where the system can ([`exchange`]), else
/// moved to `old` first, and back if the second rename fails; so a failed
/// save leaves the previous directory where it was, and where the swap
/// is one step no moment is without `dir`.
fn install(staged: &Path, dir: &Path, old: &Path) -> Result<(), Error> {
    // `check` passed: `dir` is one of ours or absent.
    let replacing = dir.exists();
    if replacing {
        if exchange(staged, dir).map_err(|e| Error::io(dir, e))? {
            // The previous directory, now under the staging name, is
            // superseded: moved aside as the renames below would leave it,
            // to be removed with such copies. (If it cannot be, the next
            // save removes it as a staging directory.)
            let _ = fs::rename(staged, old);
            return Ok(());
        }
        fs::rename(dir, old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = fs::rename(staged, dir) {
        if replacing && fs::rename(old, dir).is_err() {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "could not install the new checkpoint ({e}) nor move the previous one back from {}",
                    old.display()
                ),
            ));
        }
        return Err(Error::io(dir, e));
    }
    Ok(())
}

/// Swaps the names of `a` and `b` (both exist) in one step: `Ok(false)`
/// where the system or the file system cannot (then nothing changed).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let name = |path: &Path| {
        std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))
    };
    let (a, b) = (name(a)?, name(b)?);
    let (here, flags) = (libc::AT_FDCWD, libc::RENAME_EXCHANGE);
    // SAFETY: both are NUL-terminated paths that outlive the call, which
    // only reads them; the arguments are those renameat2(2) takes.
    let done = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            here,
            a.as_ptr(),
            here,
            b.as_ptr(),
            flags,
        )
    };
    if done == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // A kernel without the call, a file system without the swap, or
        // a sandbox that refuses the call (a rename it does not allow
        // fails the same way).
        Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM) => Ok(false),
        _ => Err(e),
    }
}

/// Never in one step elsewhere than Linux.
#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Whether `dir` is a directory (not a link to one) that holds files
/// named among `files` and nothing else (a link to a file counts as the
/// file, as [`Destination::check`] counts it): what a save's staging
/// directory or a copy it moved aside can hold, so a folder of the user's
/// that happens to have such a name is told apart.
fn holds_only(dir: &Path, files: &[&str]) -> bool {
    if !fs::symlink_metadata(dir).is_ok_and(|meta| meta.is_dir()) {
        return false;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|entry| {
        entry.is_ok_and(|entry| {
            let name = entry.file_name();
            let is_file = fs::metadata(entry.path()).is_ok_and(|meta| meta.is_file());
            is_file && name.to_str().is_some_and(|name| files.contains(&name))
        })
    })
}

/// Writes `bytes` to a new file at `path` and flushes it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Writes `tensors` and `metadata` as the safetensors file `path`,
/// streamed (the file is never whole in memory, so saving a model that
/// fills memory needs no second copy of it), then flushes it to disk.
///
/// The header is written here, not by the safetensors crate, whose
/// metadata map comes out in a random order: with its keys sorted, the
/// same tensors always save to the same bytes.
pub fn write_tensors_synced<V: View>(
    path: &Path,
    mut tensors: Vec<(String, V)>,
    metadata: BTreeMap<String, String>,
) -> Result<(), Error> {
    // Widest types first, as the crate does, so every tensor stays aligned
    // to its element.
    tensors.sort_by_key(|(_, tensor)| Reverse(tensor.dtype()));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".to_string(), json!(metadata));
    let mut offset = 0;
    for (name, tensor) in &tensors {
        let end = offset + tensor.data_len();
        let info = json!({"dtype": tensor.dtype(), "shape": tensor.shape(), "data_offsets": [offset, end]});
        if header.insert(name.clone(), info).is_some() {
            return Err(Error::checkpoint(path, format!("two tensors named {name}")));
        }
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).expect("JSON of plain values");
    // Padded with spaces so the data starts 8-byte aligned.
    header.resize(header.len().next_multiple_of(8), b' ');

    let write = || -> std::io::Result<()> {
        let mut file = BufWriter::new(fs::File::create(path)?);
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        for (_, tensor) in &tensors {
            file.write_all(&tensor.data())?;
        }
        file.into_inner()?.sync_all()
    };
    write().map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory for one test.
    fn fresh_parent(test: &str) -> PathBuf {
        let parent = std::env::temp_dir().join(format!("atomic-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&parent);
        fs::create_dir_all(&parent).unwrap();
        parent
    }

    #[test]
    fn tensors_save_to_the_same_bytes_and_read_back_with_the_crate() {
        use safetensors::tensor::TensorView;
        use safetensors::{Dtype, SafeTensors};

        let dir = fresh_parent("tensors");
        let (wide, narrow) = ([1.5f64, -2.0], [7u16, 8, 9]);
        let (wide, narrow) = (bytemuck::bytes_of(&wide), bytemuck::bytes_of(&narrow));
        let tensors = || {
            vec![
                (
                    "b".to_string(),
                    TensorView::new(Dtype::U16, vec![3], narrow).unwrap(),
                ),
                (
                    "a".to_string(),
                    TensorView::new(Dtype::F64, vec![2, 1], wide).unwrap(),
                ),
                (
                    "empty".to_string(),
                    TensorView::new(Dtype::F32, vec![0, 3], &[]).unwrap(),
                ),
            ]
        };
        let meta: BTreeMap<_, _> = (0..20)
            .map(|i| (format!("key{i}"), i.to_string()))
            .collect();
        let (first, second) = (dir.join("first"), dir.join("second"));
        write_tensors_synced(&first, tensors(), meta.clone()).unwrap();
        write_tensors_synced(&second, tensors(), meta.clone()).unwrap();
        let bytes = fs::read(&first).unwrap();
        assert_eq!(bytes, fs::read(&second).unwrap());

        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        let read = SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let read_meta = header.metadata().clone().unwrap();
        assert_eq!(read_meta.into_iter().collect::<BTreeMap<_, _>>(), meta);
        let a = read.tensor("a").unwrap();
        assert_eq!(
            (a.dtype(), a.shape(), a.data()),
            (Dtype::F64, &[2, 1][..], wide)
        );
        assert_eq!(read.tensor("empty").unwrap().shape(), [0, 3]);
        let b = read.tensor("b").unwrap();
        assert_eq!(
            (b.dtype(), b.shape(), b.data()),
            (Dtype::U16, &[3][..], narrow)
        );
        // The wider type first: the narrow one after it cannot misalign it.
        assert_eq!(&bytes[8 + header_len..][..wide.len()], wide);

        let twice = vec![tensors().remove(0), tensors().remove(0)];
        let err = write_tensors_synced(&dir.join("twice"), twice, meta).unwrap_err();
        assert!(err.to_string().contains("two tensors named b"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The names in `dir`.
    fn names_in(dir: &Path) -> Vec<std::ffi::OsString> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    #[test]
    fn a_staging_directory_left_under_this_process_id_is_replaced() {
        let parent = fresh_parent("test");
        let dir = parent.join("ckpt");
        // What a save killed in a process of the same id leaves behind.
        let stale = staging_dir(&parent, "ckpt");
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("a.txt"), b"partial").unwrap();
        let destination = Destination::new(&dir, &["a.txt"]);
        destination.check().unwrap();
        destination
            .replace_with(|tmp| write_synced(&tmp.join("a.txt"), b"new"))
            .unwrap();
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"new");
        assert_eq!(names_in(&parent), ["ckpt"]);
        // `ckpt/.` names the same directory, and a save there replaces it.
        Destination::new(&dir.join("."), &["a.txt"])
            .replace_with(|tmp| write_synced(&tmp.join("a.txt"), b"newer"))
            .unwrap();
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"newer");
        // So does `ckpt/../ckpt`, whose parent goes through the directory
        // the save moves aside.
        let through_itself = dir.join("..").join("ckpt");
        let destination = Destination::new(&through_itself, &["a.txt"]);
        destination.check().unwrap();
        destination
            .replace_with(|tmp| write_synced(&tmp.join("a.txt"), b"newest"))
            .unwrap();
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"newest");
        assert_eq!(names_in(&parent), ["ckpt"]);
        assert!(Destination::new(&dir.join(".."), &["a.txt"])
            .check()
            .is_err());
        fs::remove_dir_all(&parent).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_check_waits_while_a_save_holds_the_parent() {
        use std::sync::mpsc;
        use std::time::Duration;
        let parent = fresh_parent("lock");
        // Another run's save in progress: its staging directory, and the
        // parent's lock held.
        let staging = parent.join(format!("{}999999", staging_prefix("ckpt")));
        fs::create_dir(&staging).unwrap();
        let saving = fs::File::open(&parent).unwrap();
        saving.lock().unwrap();
        let dir = parent.join("ckpt");
        let (sender, checked) = mpsc::channel();
        let check = std::thread::spawn(move || {
            let result = Destination::new(&dir, &["a.txt"]).check();
            sender.send(result.map_err(|e| e.to_string())).unwrap();
        });
        assert!(checked.recv_timeout(Duration::from_millis(300)).is_err());
        assert!(staging.exists(), "removed during another run's save");
        drop(saving);
        checked
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .unwrap();
        check.join().unwrap();
        // The save is over (or was killed): its staging directory goes.
        assert!(!staging.exists());
        fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn a_copy_moved_aside_under_this_process_id_does_not_stop_a_save() {
        let parent = fresh_parent("aside");
        let dir = parent.join("ckpt");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("a.txt"), b"in place").unwrap();
        // A save killed after its second rename, in a process of this id.
        let old = parent.join(format!("{}{}", aside_prefix("ckpt"), std::process::id()));
        fs::create_dir(&old).unwrap();
        fs::write(old.join("a.txt"), b"superseded").unwrap();
        let destination = Destination::new(&dir, &["a.txt"]);
        destination.check().unwrap();
        assert!(!old.exists(), "checked before the run, not at its end");
        fs::create_dir(&old).unwrap();
        destination
            .replace_with(|tmp| write_synced(&tmp.join("a.txt"), b"new"))
            .unwrap();
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"new");
        assert_eq!(names_in(&parent), ["ckpt"]);
        fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn a_copy_to_restore_and_folders_under_a_files_name_are_never_deleted() {
        let parent = fresh_parent("keep");
        let write = |tmp: &Path| write_synced(&tmp.join("a.txt"), b"new");

        // `ckpt` is missing and its previous copy waits to be restored.
        let dir = parent.join("ckpt");
        let aside = parent.join(format!("{}4242", aside_prefix("ckpt")));
        fs::create_dir(&aside).unwrap();
        fs::write(aside.join("a.txt"), b"old").unwrap();
        let destination = Destination::new(&dir, &["a.txt"]);
        let err = destination.replace_with(write).unwrap_err().to_string();
        assert!(err.contains("rename it to"), "{err}");
        assert_eq!(fs::read(aside.join("a.txt")).unwrap(), b"old");
        assert!(!dir.exists());

        // A folder holding only names of the checkpoint's files, one of
        // them a folder of the user's.
        let user = parent.join("user");
        fs::create_dir_all(user.join("a.txt")).unwrap();
        fs::write(user.join("a.txt").join("keep.txt"), b"mine").unwrap();
        let err = Destination::new(&user, &["a.txt"])
            .replace_with(write)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a checkpoint to replace"), "{err}");
        assert_eq!(
            fs::read(user.join("a.txt").join("keep.txt")).unwrap(),
            b"mine"
        );

        // A folder holding one of the names, but not every file a save
        // writes.
        let only = parent.join("only");
        fs::create_dir(&only).unwrap();
        fs::write(only.join("a.txt"), b"mine").unwrap();
        let err = Destination::new(&only, &["a.txt", "b.txt"])
            .requiring(&["a.txt", "b.txt"])
            .replace_with(write)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no `b.txt`"), "{err}");
        assert_eq!(fs::read(only.join("a.txt")).unwrap(), b"mine");

        // Folders of the user's under a save's temporary names: kept, and
        // not taken for a copy to restore.
        let mine = parent.join("mine");
        let staged = parent.join(format!("{}55555", staging_prefix("mine")));
        let aside = parent.join(format!("{}77777", aside_prefix("mine")));
        for folder in [&staged, &aside] {
            fs::create_dir_all(folder.join("sub")).unwrap();
            fs::write(folder.join("a.txt"), b"mine").unwrap();
            fs::write(folder.join("sub").join("notes.txt"), b"mine").unwrap();
        }
        let destination = Destination::new(&mine, &["a.txt"]);
        assert_eq!(destination.moved_aside(), None);
        destination.replace_with(write).unwrap();
        destination.replace_with(write).unwrap();
        assert_eq!(fs::read(mine.join("a.txt")).unwrap(), b"new");
        for folder in [&staged, &aside] {
            assert_eq!(
                fs::read(folder.join("sub").join("notes.txt")).unwrap(),
                b"mine"
            );
        }
        // Under this process's own name it would stop the save after the
        // run: refused up front, and kept.
        let own = parent.join(format!("{}{}", aside_prefix("mine"), std::process::id()));
        fs::rename(&aside, &own).unwrap();
        let err = destination.check().unwrap_err().to_string();
        assert!(err.contains("is in the way of saving"), "{err}");
        assert!(own.join("sub").join("notes.txt").is_file());
        fs::remove_dir_all(&parent).unwrap();
    }

    /// A copy moved aside that holds links to its files (a Hugging Face
    /// snapshot saved over) is the save's and goes, links only; a link
    /// named like a copy is not one.
    #[cfg(unix)]
    #[test]
    fn links_are_removed_as_links_and_never_followed() {
        let parent = fresh_parent("links");
        let dir = parent.join("ckpt");
        let blobs = parent.join("blobs");
        fs::create_dir(&blobs).unwrap();
        fs::write(blobs.join("a"), b"blob").unwrap();
        let aside = parent.join(format!("{}4242", aside_prefix("ckpt")));
        fs::create_dir(&aside).unwrap();
        std::os::unix::fs::symlink(blobs.join("a"), aside.join("a.txt")).unwrap();
        let destination = Destination::new(&dir, &["a.txt"]);
        assert_eq!(destination.moved_aside(), Some(aside.clone()));
        destination
            .replace_with(|tmp| write_synced(&tmp.join("a.txt"), b"new"))
            .unwrap_err();
        fs::remove_dir_all(&aside).unwrap();
        // A link to a folder of the checkpoint's names, under a copy's
        // name: neither a copy to restore nor removed.
        let elsewhere = parent.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("a.txt"), b"mine").unwrap();
        let linked = parent.join(format!("{}4243", aside_prefix("ckpt")));
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        assert_eq!(destination.moved_aside(), None);
        for text in [&b"new"[..], b"newer"] {
            destination
                .replace_with(|tmp| write_synced(&tmp.join("a.txt"), text))
                .unwrap();
        }
        assert!(fs::symlink_metadata(&linked).is_ok());
        assert_eq!(fs::read(elsewhere.join("a.txt")).unwrap(), b"mine");
        // With a checkpoint in place, a copy of links is superseded.
        fs::create_dir(&aside).unwrap();
        std::os::unix::fs::symlink(blobs.join("a"), aside.join("a.txt")).unwrap();
        destination
            .replace_with(|tmp| write_synced(&tmp.join("a.txt"), b"newest"))
            .unwrap();
        assert!(!aside.exists());
        assert_eq!(fs::read(blobs.join("a")).unwrap(), b"blob");
        fs::remove_dir_all(&parent).unwrap();
    }

    /// Two directories swap names in one step, or, where the file system
    /// cannot, neither moves (and a save takes two renames).
    #[test]
    fn an_exchange_swaps_two_directories_or_leaves_both() {
        let parent = fresh_parent("exchange");
        let (a, b) = (parent.join("a"), parent.join("b"));
        for (dir, text) in [(&a, "in a"), (&b, "in b")] {
            fs::create_dir(dir).unwrap();
            fs::write(dir.join("f"), text).unwrap();
        }
        let swapped = exchange(&a, &b).unwrap();
        let read = |dir: &Path| fs::read_to_string(dir.join("f")).unwrap();
        if swapped {
            assert_eq!((read(&a), read(&b)), ("in b".into(), "in a".into()));
            // A missing name is an error, not a swap to do otherwise.
            assert!(exchange(&a, &parent.join("none")).is_err());
        } else {
            println!("this file system swaps no names in one step: saves rename twice");
            assert_eq!((read(&a), read(&b)), ("in a".into(), "in b".into()));
        }
        fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn a_save_that_fails_to_write_names_the_destination_and_leaves_it() {
        let parent = fresh_parent("fails");
        let dir = parent.join("ckpt");
        let destination = Destination::new(&dir, &["a.txt"]);
        destination
            .replace_with(|tmp| write_synced(&tmp.join("a.txt"), b"old"))
            .unwrap();
        let err = destination
            .replace_with(|tmp| {
                Err(Error::io(
                    tmp.join("a.txt"),
                    std::io::ErrorKind::StorageFull.into(),
                ))
            })
            .unwrap_err()
            .to_string();
        let want = format!("checkpoint {}: could not be written", dir.display());
        assert!(err.starts_with(&want), "{err}");
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"old");
        assert_eq!(names_in(&parent), ["ckpt"]);
        fs::remove_dir_all(&parent).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_free_space_is_what_df_reports_and_a_save_larger_than_it_is_refused() {
        let parent = fresh_parent("room");
        let free = outputs::free_bytes(&parent).expect("statvfs answers for a temporary directory");
        match std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&parent)
            .output()
        {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let df: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
                // Other processes write meanwhile: within 1 GiB or 5 %.
                let slack = (1u64 << 30).max(df / 20);
                assert!(free.abs_diff(df) <= slack, "statvfs {free}, df {df}");
            }
            _ => println!("notice: no GNU df here; the free space is not compared"),
        }
        let dir = parent.join("ckpt");
        let destination = Destination::new(&dir, &["a.txt"]);
        destination.check_room(0).unwrap();
        let err = destination.check_room(u64::MAX).unwrap_err().to_string();
        assert!(err.contains("MiB is free in"), "{err}");
        assert!(
            err.starts_with(&format!("checkpoint {}", dir.display())),
            "{err}"
        );
        fs::remove_dir_all(&parent).unwrap();
    }
}
