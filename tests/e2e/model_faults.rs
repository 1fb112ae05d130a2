//! Faults under a running daemon, each as the README's "Faults" section says it behaves: the
//! model directory deleted, then replaced, under it; SIGHUP pointing at a broken model (the
//! loaded one keeps serving, never freed); the disk full when a prefix snapshot is written, and
//! the log going to a full disk. The tmpfs tests mount a small filesystem and need root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::daemon::{streamed_text, Daemon};
use crate::common::wait::Bounded;
use serde_json::{json, Value};

/// A greedy completion's text.
fn complete(d: &Daemon, id: &str) -> String {
    let mut c = d.client();
    c.send(&json!({"id": id, "op": "complete", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}));
    let events = c.until_terminal(id);
    let end = events.last().unwrap();
    assert_eq!(end["event"], "done", "{end}\n{}", d.log_text());
    streamed_text(&events, id)
}

fn wait_log(d: &Daemon, what: &str, count: usize) {
    d.wait_log(what, count, Duration::from_secs(60));
}

/// Replaces `path` with `bytes` (a new file: the copies share the fixtures' files by hard links).
fn rewrite(path: &Path, bytes: &[u8]) {
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn model_copy(dir: &Path, name: &str, fixture: &str) -> PathBuf {
    let to = dir.join(name);
    crate::common::copy_model(&crate::common::model_dir(fixture, "int4"), &to);
    to
}

#[test]
fn the_model_directory_deleted_then_replaced_under_a_running_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path(), "model", "tiny-a");
    let d = Daemon::start_with_model(&model, "");
    let before = complete(&d, "before");

    // The files deleted: what is loaded keeps serving, and a reload keeps it rather than
    // freeing it for files that are not there.
    for file in std::fs::read_dir(&model).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }
    assert_eq!(complete(&d, "deleted"), before);
    d.signal(libc::SIGHUP);
    wait_log(&d, "the model loaded before keeps serving", 1);
    let log = d.log_text();
    assert!(log.contains("model.onnx.data was deleted") && log.contains("genai_config.json"), "{log}");
    assert_eq!(complete(&d, "after-reload"), before);
    // The directory itself gone: the new configuration is refused, the old one kept.
    std::fs::remove_dir(&model).unwrap();
    d.signal(libc::SIGHUP);
    wait_log(&d, "the new configuration is invalid; keeping the current one", 1);
    assert!(d.log_text().contains("model.path: cannot read"), "{}", d.log_text());
    assert_eq!(complete(&d, "dir-gone"), before);
    assert!(d.status()["model"]["path"].as_str().unwrap().ends_with("/model"));

    // Replaced by another model at the same path: the next SIGHUP loads the new files.
    let incoming = model_copy(tmp.path(), "incoming", "tiny-b");
    std::fs::rename(&incoming, &model).unwrap();
    d.signal(libc::SIGHUP);
    wait_log(&d, "the model's files changed on disk", 1);
    wait_log(&d, "loading the model for the new configuration", 1);
    wait_log(&d, "configuration reloaded", 2);
    let replaced = complete(&d, "replaced");
    let reference = Daemon::start_with_model(&crate::common::model_dir("tiny-b", "int4"), "");
    assert_eq!(replaced, complete(&reference, "reference"), "the new files are what serves");
    assert_ne!(replaced, before);
}

#[test]
fn sighup_to_a_broken_model_keeps_the_loaded_one_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start("");
    let before = complete(&d, "before");
    let good = d.status()["model"]["path"].clone();
    let truncated = model_copy(tmp.path(), "truncated", "tiny-b");
    let data = truncated.join("model.onnx.data");
    let bytes = std::fs::read(&data).unwrap();
    rewrite(&data, &bytes[..bytes.len() / 2]);
    let no_tokenizer = model_copy(tmp.path(), "no-tokenizer", "tiny-b");
    rewrite(&no_tokenizer.join("tokenizer.json"), b"{\"model\": ");
    for (n, (broken, named)) in [(&truncated, "model.onnx.data"), (&no_tokenizer, "tokenizer.json")].into_iter().enumerate() {
        std::fs::write(&d.config, crate::common::daemon::config_text(broken, &d.socket, "")).unwrap();
        d.signal(libc::SIGHUP);
        wait_log(&d, "the model loaded before keeps serving", n + 1);
        let log = d.log_text();
        let line = log.lines().rfind(|l| l.contains("keeps serving")).unwrap();
        assert!(line.contains(named), "the refusal names {named}: {line}");
        assert_eq!(d.status()["model"]["path"], good, "{log}");
        assert_eq!(complete(&d, &format!("after-{n}")), before);
    }
    assert!(!d.log_text().contains("loading the model for the new configuration"), "the loaded model was never freed");
}

/// A tmpfs of `kib` KiB at `at`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, kib: u64) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"]).arg(at).output_in_time();
        assert!(out.status.success(), "mounting a tmpfs (this test needs root): {}", String::from_utf8_lossy(&out.stderr));
        Self(at.to_path_buf())
    }

    fn fill(&self) {
        let _ = std::fs::write(self.0.join("filler"), vec![0u8; 64 << 20]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn intent(d: &Daemon, id: &str) -> Value {
    let mut c = d.client();
    c.send(&json!({"id": id, "op": "intent", "text": "turn on the kitchen light"}));
    c.until_terminal(id).pop().unwrap()
}

#[test]
fn a_full_disk_under_the_snapshot_directory_is_logged_and_serving_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("cache"), 256);
    disk.fill();
    let cache = format!("[cache]\ndir = {:?}\n", disk.0.display().to_string());
    let d = Daemon::start(&cache);
    wait_log(&d, "could not", 1);
    let log = d.log_text();
    assert!(log.contains("No space left on device"), "the warning says why: {log}");
    let end = intent(&d, "kitchen");
    assert_eq!(end["event"], "intent", "{end}");
    // The catalog is pinned in memory all the same (the warm-up may still be finishing: the
    // intent above is answered by the sentence templates).
    d.wait_status("the catalog to be pinned in memory all the same", Duration::from_secs(30), |s| s["cache"]["pinned"] == 1);
    let left: Vec<_> = std::fs::read_dir(&disk.0).unwrap().flatten().map(|e| e.file_name()).filter(|n| n != "filler").collect();
    assert!(left.is_empty(), "no partial file is left behind: {left:?}");
}

#[test]
fn a_log_on_a_full_disk_does_not_stop_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("logs"), 64);
    disk.fill();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(disk.0.join("daemon.log")).unwrap();
    let mut d = Daemon::start_customized(&crate::common::model_dir("tiny-a", "int4"), "", "", |c| {
        c.env("QWENEDGE_LOG", "debug").stderr(log);
    });
    for n in 0..5 {
        assert!(!complete(&d, &format!("r{n}")).is_empty());
    }
    assert_eq!(intent(&d, "kitchen")["event"], "intent");
    d.signal(libc::SIGHUP);
    assert!(!complete(&d, "after-reload").is_empty());
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "a clean exit");
}
