//! The files a command writes beside checkpoints (`--json`, `--plot`):
//! checked before any work that each can be written and that writing it
//! destroys nothing the run reads or saves, nor a file an earlier run of
//! the same option did not write. The check leaves an existing file as it
//! is: `train --json` truncates it once its run is accepted, the others
//! replace it whole at the end ([`write_whole`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Flushes a directory's entries (names created or renamed in it) to disk,
/// without which a crash could lose a rename that already returned.
pub fn sync_dir(path: &Path) -> Result<(), Error> {
    // Other systems cannot open a directory as a file.
    #[cfg(unix)]
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// An output file and the option that named it (`"--json"`).
pub type Output<'a> = (&'static str, &'a Path);

/// Refuses, before a run, a `save` folder inside one of `inputs` (a
/// checkpoint or data folder the run reads, which would then hold a
/// folder not its own), and an output that cannot be written, that is (or
/// lies inside) one of `inputs` (files or folders the run reads), that
/// lies inside `save` (the checkpoint folder a save replaces whole), that
/// another output names too, or that is an existing file an earlier run
/// of the option did not write.
pub fn check_outputs(
    outputs: &[Output],
    inputs: &[&Path],
    save: Option<&Path>,
) -> Result<(), Error> {
    // (The folder itself is another matter: `--resume DIR --save DIR`
    // replaces it, and the save's own check refuses a data folder.)
    if let Some(dir) = save {
        let inside = |input: &&&Path| covers(input, dir) && resolved(input) != resolved(dir);
        if let Some(input) = inputs.iter().find(inside) {
            return Err(Error::Config(format!(
                "--save {} lies inside {}, which this run reads; choose another path",
                dir.display(),
                input.display()
            )));
        }
    }
    for (i, &(option, path)) in outputs.iter().enumerate() {
        let refuse = |why: String| {
            Err(Error::Config(format!(
                "{option} {} {why}; choose another path",
                path.display()
            )))
        };
        let same = |input: &&&Path| same_file(input, path) || resolved(input) == resolved(path);
        if let Some(input) = inputs.iter().find(same) {
            return refuse(format!(
                "would overwrite {}, which this run reads",
                input.display()
            ));
        }
        if let Some(input) = inputs.iter().find(|input| covers(input, path)) {
            return refuse(format!(
                "lies inside {}, which this run reads",
                input.display()
            ));
        }
        if let Some(dir) = save.filter(|dir| covers(dir, path)) {
            return refuse(format!(
                "lies inside the --save folder {}, which the save replaces whole",
                dir.display()
            ));
        }
        if let Some((other, _)) = outputs[..i].iter().find(|(_, p)| covers(p, path)) {
            return refuse(format!("is also the {other} file"));
        }
        check_writable(path)?;
        check_replaceable(option, path)?;
    }
    Ok(())
}

/// Refuses an existing, non-empty regular file that an earlier run of
/// this option did not write (a loss plot for `--plot`, JSON lines whose
/// first is a record of ours for the others): an output replaces an
/// earlier run's, never a checkpoint's `config.json`, a dataset or a
/// drawing of the user's. The run's own stdout or stderr is appended to,
/// not replaced, and passes.
fn check_replaceable(option: &str, path: &Path) -> Result<(), Error> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() > 0 => meta,
        _ => return Ok(()),
    };
    if own_stream(&meta).is_some() {
        return Ok(());
    }
    // Our records and the start of our plots up to the axis label fit
    // well within this.
    let mut head = Vec::new();
    File::open(path)
        .and_then(|file| file.take(1 << 16).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8_lossy(&head);
    let (ours, kind) = match option {
        "--plot" => (
            text.trim_start().starts_with("<svg") && text.contains(crate::plot::Y_LABEL),
            "a loss plot of this runner's",
        ),
        _ => (
            is_our_record(text.lines().next()),
            "a JSON-lines log of this runner's",
        ),
    };
    if ours {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{option} {} exists and is not {kind}, the only kind of file it replaces; remove it or choose another path",
        path.display()
    )))
}

/// Whether `line` is a JSON object whose `kind` is one of our records'.
fn is_our_record(line: Option<&str>) -> bool {
    let Some(Ok(serde_json::Value::Object(record))) = line.map(serde_json::from_str) else {
        return false;
    };
    let kind = record.get("kind").and_then(|kind| kind.as_str());
    kind.is_some_and(|kind| crate::metrics::Record::KINDS.contains(&kind))
}

/// This process's stdout or stderr, where the file `target` describes is
/// one of them (`--json /dev/stdout` with stdout sent to a file).
#[cfg(unix)]
pub fn own_stream(target: &std::fs::Metadata) -> Option<File> {
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::fs::MetadataExt;
    let same_file = |fd: BorrowedFd| {
        let file = File::from(fd.try_clone_to_owned().ok()?);
        let meta = file.metadata().ok()?;
        (meta.dev() == target.dev() && meta.ino() == target.ino()).then_some(file)
    };
    same_file(std::io::stdout().as_fd()).or_else(|| same_file(std::io::stderr().as_fd()))
}

/// Never, elsewhere than Unix (where streams are not compared).
#[cfg(not(unix))]
pub fn own_stream(_: &std::fs::Metadata) -> Option<File> {
    None
}

/// Refuses a file that cannot be written: opens an existing one for
/// appending (leaving it as it is); where there is none (or a link to
/// none), creates it and removes it again, so that a name the file system
/// refuses (too long, a character it does not allow) is refused now, not
/// after the run (made only where nothing was: no file of the user's is
/// touched).
fn check_writable(path: &Path) -> Result<(), Error> {
    // `out/` names a folder, even one that does not exist yet.
    if path.is_dir()
        || path
            .as_os_str()
            .to_string_lossy()
            .ends_with(['/', std::path::MAIN_SEPARATOR])
    {
        return Err(Error::Config(format!(
            "{} names a folder, not a file",
            path.display()
        )));
    }
    let probe = if path.metadata().is_ok_and(|meta| is_pipe(&meta.file_type())) {
        // Opening a pipe waits for a reader, and closing it again would
        // end that reader's input before the run writes a line: the run
        // opens it once ([`announce_pipe`]), and the check only asks.
        may_write(path)
    } else if path.exists() {
        // Replaced through a file made beside it ([`write_whole`]).
        OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|_| link_target(path))
            .and_then(|target| probe(&unique_name(parent(&target), "probe")))
    } else {
        link_target(path).and_then(|target| probe(&target))
    };
    probe.map_err(|e| Error::io(path, e))
}

/// Creates the file `path`, where none is, and removes it again: the
/// folder takes a new file of that name.
fn probe(path: &Path) -> std::io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(_) => std::fs::remove_file(path),
        // Made meanwhile (another run's check of the same name): the name
        // is one the file system takes.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// A name in `dir` that nothing else uses: this process's id and the
/// time (one left by a process killed before it removed its file is no
/// obstacle).
fn unique_name(dir: &Path, what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos());
    dir.join(format!(".runner-{what}-{}-{nanos}", std::process::id()))
}

/// The file `path` names: the end of a chain of links (which need not
/// exist), or `path` itself; an error for a loop of links.
fn link_target(path: &Path) -> std::io::Result<PathBuf> {
    if let Ok(real) = path.canonicalize() {
        return Ok(real);
    }
    // A dangling chain: followed link by link, as far as the kernel would
    // (40 links on Linux) before it calls the chain a loop.
    let mut end = path.to_path_buf();
    // 40 links, then the 41st read finds the end.
    for _ in 0..=40 {
        match std::fs::read_link(&end) {
            Ok(target) => end = parent(&end).join(target),
            Err(_) => return Ok(end),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

/// Writes a finished output at once. A regular file (or a new one) is
/// written under a temporary name in its folder, flushed to disk and
/// renamed over it (with its permissions), so that an earlier run's file
/// stays whole until the new one is (a full disk, a signal); a link's
/// target is replaced, the link kept. A pipe, a device, or this process's
/// own stdout or stderr is written in place.
pub fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |e| Error::io(path, e);
    let in_place = |meta: std::fs::Metadata| !meta.is_file() || own_stream(&meta).is_some();
    if std::fs::metadata(path).is_ok_and(in_place) {
        let mut file = open_output(path).map_err(io)?;
        return file.write_all(bytes).map_err(io);
    }
    let target = link_target(path).map_err(io)?;
    let temporary = unique_name(parent(&target), "output");
    // Made here, so removed on failure: never a file of anyone else's.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(io)?;
    let kept = std::fs::metadata(&target).map(|meta| meta.permissions());
    let written = file
        .write_all(bytes)
        .and_then(|()| kept.map_or(Ok(()), |kept| file.set_permissions(kept)))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, &target));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(e));
    }
    sync_dir(parent(&target))
}

/// `path` opened to write anew: a new (or truncated) file, except where it
/// is this process's own stdout or stderr (`--json /dev/stdout` with stdout
/// sent to a file): then that stream's descriptor, whose offset the stream
/// shares, since truncating the file through another would wipe what the
/// stream wrote and write over it.
pub fn open_output(path: &Path) -> std::io::Result<File> {
    #[cfg(unix)]
    if let Ok(target) = std::fs::metadata(path) {
        if let Some(stream) = own_stream(&target) {
            return Ok(stream);
        }
    }
    announce_pipe(path);
    File::create(path)
}

/// Whether this process may write `path`, asked without opening it.
#[cfg(unix)]
fn may_write(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `name` is a NUL-terminated path that outlives the call.
    match unsafe { libc::access(name.as_ptr(), libc::W_OK) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Never asked elsewhere than Unix, where no file is a pipe.
#[cfg(not(unix))]
fn may_write(_: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Logs, where `path` is a named pipe, that opening it to write waits
/// for a reader: said before the open, which may block.
pub fn announce_pipe(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|meta| is_pipe(&meta.file_type())) {
        log::info!(
            "Writing {} (a pipe) once a process reads it",
            path.display()
        );
    }
}

/// Whether a file is a named pipe, whose opening waits for the other end.
#[cfg(unix)]
pub fn is_pipe(kind: &std::fs::FileType) -> bool {
    std::os::unix::fs::FileTypeExt::is_fifo(kind)
}

/// Whether a file is a named pipe: never, elsewhere than Unix.
#[cfg(not(unix))]
pub fn is_pipe(_: &std::fs::FileType) -> bool {
    false
}

/// The folder `path` is named in (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether `path` is `outer` or lies inside it, symbolic links and `..`
/// resolved.
fn covers(outer: &Path, path: &Path) -> bool {
    resolved(path).starts_with(resolved(outer))
}

/// Whether the existing file `path` is `input` or, for a folder, one of
/// the files in it, under any name (a hard link too).
fn same_file(input: &Path, path: &Path) -> bool {
    let Some(id) = file_id(path) else {
        return false;
    };
    if input.is_dir() {
        let entries = std::fs::read_dir(input).into_iter().flatten().flatten();
        entries
            .into_iter()
            .any(|entry| file_id(&entry.path()) == Some(id))
    } else {
        file_id(input) == Some(id)
    }
}

/// The device and inode of an existing file (`None` elsewhere than Unix,
/// where only the paths are compared).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// `path` made absolute with links resolved; for a path that does not
/// exist yet (or a chain of links to one), its parent's resolution and
/// its name: where a write would make it.
pub fn resolved(path: &Path) -> PathBuf {
    if let Ok(real) = path.canonicalize() {
        return real;
    }
    let end = link_target(path).unwrap_or_else(|_| path.into());
    match (parent(&end).canonicalize(), end.file_name()) {
        (Ok(real), Some(name)) => real.join(name),
        _ => std::path::absolute(&end).unwrap_or(end),
    }
}

/// The bytes an unprivileged user may still write on the file system that
/// holds `dir` (a folder's name, `.` for the current one), where the OS
/// tells.
#[cfg(unix)]
#[allow(clippy::useless_conversion)] // the field types differ by platform
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and
    // `stats` points to writable memory the size of a `statvfs`.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    u64::from(stats.f_bavail).checked_mul(u64::from(stats.f_frsize))
}

#[cfg(not(unix))]
pub fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// Where `dir`'s file system has less room than `bytes`, how much it has,
/// for a refusal to end with (`only 4.0 MiB is free in DIR`); `None` where
/// it has room or cannot tell.
pub fn lacks_room(dir: &Path, bytes: u64) -> Option<String> {
    let free = free_bytes(dir).filter(|&free| free < bytes)?;
    Some(format!(
        "only {:.1} MiB is free in {}",
        crate::metrics::mib(free as f64),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("runner-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_check_leaves_files_as_they_were_and_refuses_what_cannot_be_written() {
        let dir = scratch("output-check");
        let existing = dir.join("old.svg");
        std::fs::write(&existing, "a plot the user made").unwrap();
        check_writable(&existing).unwrap();
        assert_eq!(
            std::fs::read_to_string(&existing).unwrap(),
            "a plot the user made"
        );
        let new = dir.join("new.svg");
        check_writable(&new).unwrap();
        assert!(!new.exists(), "the probe file was left behind");
        assert!(check_writable(&dir.join("missing").join("x.svg")).is_err());
        assert!(check_writable(&dir).is_err(), "a directory is not a file");
        // Names the file system refuses, though their folder is writable.
        let long = dir.join(format!("{}.svg", "a".repeat(300)));
        assert!(check_writable(&long).is_err(), "a name of 304 bytes");
        #[cfg(unix)]
        assert!(check_writable(&dir.join("x.svg/.")).is_err());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "a probe was left"
        );
        // A link to nothing stays a link to nothing.
        #[cfg(unix)]
        {
            let dangling = dir.join("dangling.jsonl");
            std::os::unix::fs::symlink("target.jsonl", &dangling).unwrap();
            check_writable(&dangling).unwrap();
            assert!(
                std::fs::symlink_metadata(&dangling).is_ok(),
                "the link was removed"
            );
            assert!(!dir.join("target.jsonl").exists(), "its target was made");
            // A chain of links to nothing: its end is the file written.
            let first = dir.join("first.jsonl");
            std::os::unix::fs::symlink("dangling.jsonl", &first).unwrap();
            check_writable(&first).unwrap();
            write_whole(&first, b"at the end of the chain").unwrap();
            assert!(std::fs::symlink_metadata(&first).unwrap().is_symlink());
            assert!(std::fs::symlink_metadata(&dangling).unwrap().is_symlink());
            let end = std::fs::read(dir.join("target.jsonl")).unwrap();
            assert_eq!(end, b"at the end of the chain");
            // A loop of links is refused, not followed for ever.
            let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
            std::os::unix::fs::symlink("b.jsonl", &a).unwrap();
            std::os::unix::fs::symlink("a.jsonl", &b).unwrap();
            assert!(check_writable(&a).is_err());
            assert!(write_whole(&a, b"x").is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_whole_write_replaces_a_file_or_a_links_target_keeping_its_mode() {
        let dir = scratch("output-whole");
        let file = dir.join("log.jsonl");
        std::fs::write(&file, "an earlier run's").unwrap();
        write_whole(&file, b"this run's").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"this run's");
        #[cfg(unix)]
        {
            let link = dir.join("link.jsonl");
            std::os::unix::fs::symlink("log.jsonl", &link).unwrap();
            write_whole(&link, b"through the link").unwrap();
            assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
            assert_eq!(std::fs::read(&file).unwrap(), b"through the link");
        }
        // The file's permissions stay, and nothing else is left.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o640);
            std::fs::set_permissions(&file, mode).unwrap();
            write_whole(&file, b"again").unwrap();
            let kept = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(kept & 0o777, 0o640);
        }
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), if cfg!(unix) { 2 } else { 1 });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_an_earlier_runs_log_or_plot_is_replaced() {
        let dir = scratch("output-kind");
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let refused = |option: &str, path: &Path| {
            let err = check_replaceable(option, path).unwrap_err().to_string();
            assert!(err.contains("exists and is not"), "{err}");
        };
        let log = file(
            "log.jsonl",
            "{\"kind\":\"eval\",\"step\":1}\n{\"kind\":\"eval\"}\n",
        );
        check_replaceable("--json", &log).unwrap();
        check_replaceable("--json", &file("empty.jsonl", "")).unwrap();
        for (name, text) in [
            ("config.json", "{\n  \"n_layer\": 2,\n  \"n_head\": 2\n}\n"),
            ("data.jsonl", "{\"text\": \"a line of a dataset\"}\n"),
            ("other.jsonl", "{\"kind\":\"a log of another tool\"}\n"),
            ("cut.jsonl", "{\"kind\":\"train_st"),
            ("array.json", "[1, 2, 3]\n"),
        ] {
            refused("--json", &file(name, text));
        }
        let plot = dir.join("loss.svg");
        let train: Vec<(u32, f32)> = (1..=20_000).map(|s| (s, 1.0 / s as f32)).collect();
        crate::plot::loss_curve(&plot, &train, &[(10_000, 0.5)]).unwrap();
        check_replaceable("--plot", &plot).unwrap();
        let drawing = "<svg xmlns=\"http://www.w3.org/2000/svg\"><circle r=\"4\"/></svg>\n";
        refused("--plot", &file("drawing.svg", drawing));
        refused("--plot", &log);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The check does not open a named pipe: with no reader it would wait
    /// for ever, and with one it would end the reader's input.
    #[cfg(unix)]
    #[test]
    fn a_named_pipe_is_checked_without_opening_it() {
        let dir = scratch("output-pipe");
        let pipe = dir.join("log.jsonl");
        let name = std::ffi::CString::new(pipe.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let (done, checked) = std::sync::mpsc::channel();
        let outputs = [("--json", pipe.clone())];
        std::thread::spawn(move || {
            let outputs: Vec<Output> = outputs.iter().map(|(o, p)| (*o, p.as_path())).collect();
            done.send(check_outputs(&outputs, &[], None).is_ok())
        });
        let result = checked.recv_timeout(std::time::Duration::from_secs(10));
        if result.is_err() {
            // Release the waiting open before failing.
            use std::os::unix::fs::OpenOptionsExt;
            let _ = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&pipe);
        }
        assert_eq!(result, Ok(true), "the check waited on the pipe");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_may_not_overwrite_inputs_the_save_or_each_other() {
        let dir = scratch("output-overlap");
        let data = dir.join("data.txt");
        std::fs::write(&data, "text the user made").unwrap();
        let ckpt = dir.join("ckpt");
        std::fs::create_dir(&ckpt).unwrap();
        let message = |outputs: &[Output], save: Option<&Path>| {
            check_outputs(outputs, &[&data, &ckpt], save)
                .unwrap_err()
                .to_string()
        };
        // The same file under another spelling.
        let spelled = dir.join("ckpt").join("..").join("data.txt");
        assert!(message(&[("--json", &spelled)], None).contains("which this run reads"));
        let inside = ckpt.join("model.safetensors");
        assert!(message(&[("--plot", &inside)], None).contains("lies inside"));
        // Another name for the same file.
        #[cfg(unix)]
        {
            let linked = dir.join("hard-link.txt");
            std::fs::hard_link(&data, &linked).unwrap();
            assert!(message(&[("--json", &linked)], None).contains("would overwrite"));
            let weights = ckpt.join("model.safetensors");
            std::fs::write(&weights, "weights").unwrap();
            let elsewhere = dir.join("weights-link");
            std::fs::hard_link(&weights, &elsewhere).unwrap();
            assert!(message(&[("--json", &elsewhere)], None).contains("would overwrite"));
        }
        let save = dir.join("new-ckpt");
        let in_save = save.join("log.jsonl");
        assert!(message(&[("--json", &in_save)], Some(&save)).contains("--save folder"));
        let log = dir.join("log.jsonl");
        assert!(message(&[("--json", &log), ("--plot", &log)], None).contains("--json file"));
        // Links to files not made yet are where a write would make them:
        // to the other output, into the checkpoint, into the data.
        #[cfg(unix)]
        {
            let link = |name: &str, to: &Path| {
                let path = dir.join(name);
                std::os::unix::fs::symlink(to, &path).unwrap();
                path
            };
            let to_log = link("to-log.svg", Path::new("log.jsonl"));
            let both = message(&[("--json", &log), ("--plot", &to_log)], None);
            assert!(both.contains("is also the --json file"), "{both}");
            let to_ckpt = link("to-ckpt.svg", &ckpt.join("loss.svg"));
            assert!(message(&[("--plot", &to_ckpt)], None).contains("lies inside"));
            let chain = link("chain.jsonl", &to_ckpt);
            assert!(message(&[("--json", &chain)], None).contains("lies inside"));
            let into_save = link("to-save.jsonl", &save.join("log.jsonl"));
            let saved = message(&[("--json", &into_save)], Some(&save));
            assert!(saved.contains("--save folder"), "{saved}");
            for path in [to_log, to_ckpt, chain, into_save] {
                std::fs::remove_file(path).unwrap();
            }
        }
        // A save inside a folder the run reads (the folder itself is the
        // save's own check), and outputs that name folders.
        let nested = ckpt.join("next");
        assert!(message(&[], Some(&nested)).contains("--save"));
        check_outputs(&[], &[&data, &ckpt], Some(&ckpt)).unwrap();
        let slash = dir.join("new-folder/");
        assert!(message(&[("--json", &slash)], None).contains("names a folder"));
        assert!(message(&[("--json", &dir)], None).contains("names a folder"));
        // Beside them is fine, and checking creates nothing.
        let plot = dir.join("loss.svg");
        check_outputs(
            &[("--json", &log), ("--plot", &plot)],
            &[&data, &ckpt],
            Some(&save),
        )
        .unwrap();
        assert!(!log.exists() && !plot.exists());
        assert_eq!(
            std::fs::read_to_string(&data).unwrap(),
            "text the user made"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
