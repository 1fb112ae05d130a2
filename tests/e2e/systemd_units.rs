//! Offline checks of the systemd integration files in `systemd/`.
//!
//! The units are installed into a temporary root directory together with the
//! daemon binary, and checked there with `systemd-analyze verify` (no warnings
//! allowed) and `systemd-analyze security --offline=true` (exposure at most
//! MAX_EXPOSURE). The sysusers.d and tmpfiles.d files are applied to the same
//! root. Nothing here needs systemd to be running, but the systemd tools must
//! be installed: a missing tool fails the test rather than skipping it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Highest acceptable "Overall exposure level" from `systemd-analyze security`.
const MAX_EXPOSURE: f64 = 3.0;

/// Targets the units depend on (After=, WantedBy=, and the implicit
/// dependencies of DefaultDependencies=yes). The temporary root gets an empty
/// unit for each so that verify can build its start transaction.
const TARGETS: &[&str] = &["basic.target", "multi-user.target", "network.target", "shutdown.target", "sockets.target", "sysinit.target"];

fn repo_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).canonicalize().expect("repository root")
}

fn systemd_dir() -> PathBuf {
    repo_root().join("systemd")
}

/// Runs a systemd tool with a plain, uncoloured, unpaged output. A tool that
/// is not installed fails the test with a hint which package provides it.
fn run(tool: &str, args: &[&str]) -> Output {
    match Command::new(tool)
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "cat")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("LC_ALL", "C.UTF-8")
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{tool}` was not found: these tests need the systemd tools; install the `systemd` \
             package (Debian/Ubuntu: apt-get install systemd)"
        ),
        Err(e) => panic!("could not run `{tool}`: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn write_executable(path: &Path, contents: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn copy(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}

/// A temporary root laid out like an installed system.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path();
        let src = systemd_dir();

        // ExecStart= and ExecReload= must name executables inside the root.
        copy(Path::new(env!("CARGO_BIN_EXE_qwenedge")), &root.join("usr/bin/qwenedge"));
        write_executable(&root.join("bin/kill"), b"#!/bin/sh\n");

        for unit in ["qwenedge.service", "qwenedge.socket"] {
            copy(&src.join(unit), &root.join("etc/systemd/system").join(unit));
        }
        for target in TARGETS {
            let path = root.join("usr/lib/systemd/system").join(target);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("[Unit]\nDescription={target}\n")).unwrap();
        }
        copy(&src.join("qwenedge.sysusers"), &root.join("usr/lib/sysusers.d/qwenedge.conf"));
        copy(&src.join("qwenedge.tmpfiles"), &root.join("usr/lib/tmpfiles.d/qwenedge.conf"));
        Root { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn root_arg(&self) -> String {
        format!("--root={}", self.path().display())
    }

    /// Creates the qwenedge user and group in the root's /etc/passwd and /etc/group.
    fn add_users(&self) -> Output {
        run("systemd-sysusers", &[&self.root_arg()])
    }
}

#[test]
fn units_verify_without_warnings() {
    let root = Root::new();
    let users = root.add_users();
    assert!(users.status.success(), "systemd-sysusers failed:\n{}", text(&users));

    let out = run("systemd-analyze", &["verify", "--man=no", &root.root_arg(), "qwenedge.service", "qwenedge.socket"]);
    let output = text(&out);
    // verify reports unknown keys and similar problems on stderr but still exits 0,
    // so any output at all counts as a failure.
    assert!(
        out.status.success() && output.trim().is_empty(),
        "systemd-analyze verify {} qwenedge.service qwenedge.socket: {}\n{output}",
        root.root_arg(),
        out.status
    );
}

#[test]
fn service_exposure_is_low() {
    let root = Root::new();
    let out = run("systemd-analyze", &["security", "--offline=true", "--no-pager", &root.root_arg(), "qwenedge.service"]);
    let output = text(&out);
    assert!(out.status.success(), "systemd-analyze security failed: {}\n{output}", out.status);

    let marker = "Overall exposure level for qwenedge.service:";
    let score: f64 = output
        .lines()
        .find_map(|line| line.split_once(marker).map(|(_, rest)| rest.to_owned()))
        .and_then(|rest| rest.split_whitespace().next().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("no '{marker} X.Y' line in the output:\n{output}"));
    println!("exposure level: {score}");
    assert!(score <= MAX_EXPOSURE, "exposure level {score} is above {MAX_EXPOSURE}:\n{output}");
}

#[test]
fn sysusers_creates_the_service_user() {
    let root = Root::new();
    let out = root.add_users();
    assert!(out.status.success(), "systemd-sysusers failed:\n{}", text(&out));

    let passwd = fs::read_to_string(root.path().join("etc/passwd")).expect("etc/passwd in the root");
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("qwenedge:"))
        .unwrap_or_else(|| panic!("no qwenedge user in etc/passwd:\n{passwd}"))
        .split(':')
        .collect();
    assert_eq!(user.len(), 7, "malformed passwd line {user:?}");
    let uid: u32 = user[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "qwenedge should be a system user, got uid {uid}");
    assert_eq!(user[5], "/var/lib/qwenedge", "home directory");
    assert!(user[6].ends_with("/nologin"), "login shell should be nologin, got {}", user[6]);

    let group = fs::read_to_string(root.path().join("etc/group")).expect("etc/group in the root");
    assert!(group.lines().any(|l| l.starts_with("qwenedge:")), "no qwenedge group in etc/group:\n{group}");
}

#[test]
fn tmpfiles_create_the_directories() {
    let root = Root::new();
    let users = root.add_users();
    assert!(users.status.success(), "systemd-sysusers failed:\n{}", text(&users));

    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        // Without root the chown of the created directories fails. Parse every line
        // (syntax errors are reported) while applying none of them.
        let out = run("systemd-tmpfiles", &[&root.root_arg(), "--create", "--prefix=/nonexistent"]);
        assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-tmpfiles:\n{}", text(&out));
        return;
    }

    let out = run("systemd-tmpfiles", &[&root.root_arg(), "--create"]);
    let output = text(&out);
    assert!(out.status.success() && output.trim().is_empty(), "systemd-tmpfiles --create failed:\n{output}");

    use std::os::unix::fs::MetadataExt;
    let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("qwenedge:x:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|s| s.parse().ok())
        .expect("qwenedge uid");
    for (dir, owner) in [("etc/qwenedge", 0), ("var/lib/qwenedge", uid), ("var/lib/qwenedge/models", uid)] {
        let meta = fs::metadata(root.path().join(dir)).unwrap_or_else(|e| panic!("/{dir}: {e}"));
        assert!(meta.is_dir(), "/{dir} is not a directory");
        assert_eq!(meta.uid(), owner, "owner of /{dir}");
        assert_eq!(meta.mode() & 0o7777, 0o755, "mode of /{dir}");
    }
}

/// The socket unit and the service must agree on where the socket lives, and the
/// service must not remove the directory the socket unit listens in.
#[test]
fn socket_lives_in_the_service_runtime_directory() {
    let service = fs::read_to_string(systemd_dir().join("qwenedge.service")).unwrap();
    let socket = fs::read_to_string(systemd_dir().join("qwenedge.socket")).unwrap();
    let value = |unit: &str, key: &str| -> Option<String> {
        unit.lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .next_back()
            .map(|v| v.trim().to_owned())
    };

    assert_eq!(value(&socket, "ListenStream").as_deref(), Some("/run/qwenedge/qwenedge.sock"));
    assert_eq!(value(&socket, "Service").as_deref(), Some("qwenedge.service"));
    assert_eq!(value(&service, "RuntimeDirectory").as_deref(), Some("qwenedge"));
    assert_eq!(
        value(&service, "RuntimeDirectoryPreserve").as_deref(),
        Some("yes"),
        "stopping the service must keep /run/qwenedge, where qwenedge.socket keeps listening"
    );
    assert_eq!(value(&service, "Type").as_deref(), Some("notify"));
    assert!(service.lines().any(|l| l.trim() == "ExecStart=/usr/bin/qwenedge serve --config /etc/qwenedge/config.toml"), "ExecStart");
}
