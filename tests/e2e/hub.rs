//! `qwenedge model pull|list|rm` against a local server speaking the Hugging Face Hub's routes
//! (`tests/hub/hub_server.py`: the revision and paged file list with LFS sha256, `resolve`
//! redirecting LFS files to a storage host, `Range`, ETags), serving repositories made from the
//! fixtures in transformers.js's layout. The server itself is checked against
//! `huggingface_hub`'s own `snapshot_download`: both fetch the same bytes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::wait::{self, Bounded};
use crate::common::{copy_model, greedy, reference, walk};

const REPO: &str = "onnx-community/Tiny-A-ONNX-OPT";
const TOKEN: &str = "hf_test_token";

/// The server and the repositories it serves; stopped on drop.
pub(crate) struct HubServer {
    child: Child,
    _root: tempfile::TempDir,
    pub port: u16,
}

impl Drop for HubServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HubServer {
    /// Starts the server with `onnx-community/Tiny-A-ONNX-OPT` (q4 and fp32, a vision encoder
    /// that no pull may fetch), `test/Bnb4-Only` (a variant this engine does not run),
    /// `test/Llama` (another model type) and `test/Private` (401 without the token).
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let layouts = crate::layouts::converted();
        let opt = root.path().join(REPO);
        for variant in ["q4", "fp32"] {
            copy_model(&layouts.join(format!("tiny-a-opt-{variant}")), &opt);
        }
        std::fs::write(opt.join("onnx/vision_encoder_q4.onnx"), vec![7u8; 4096]).unwrap();
        std::fs::write(opt.join("README.md"), "# Tiny A\n").unwrap();
        std::fs::write(opt.join(".gitattributes"), "*.onnx filter=lfs diff=lfs merge=lfs -text\n").unwrap();
        let private = root.path().join("test/Private");
        std::fs::create_dir_all(&private).unwrap();
        copy_model(&layouts.join("tiny-a-opt-q4"), &private);
        let bnb = root.path().join("test/Bnb4-Only/onnx");
        std::fs::create_dir_all(&bnb).unwrap();
        std::fs::copy(opt.join("config.json"), bnb.parent().unwrap().join("config.json")).unwrap();
        std::fs::write(bnb.join("decoder_model_merged_bnb4.onnx"), b"x").unwrap();
        let llama = root.path().join("test/Llama/onnx");
        std::fs::create_dir_all(&llama).unwrap();
        std::fs::write(llama.parent().unwrap().join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
        std::fs::write(llama.join("decoder_model_merged_q4.onnx"), vec![1u8; 1 << 16]).unwrap();
        let port_file = root.path().join("port");
        let child = Command::new(crate::common::clients::python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/hub/hub_server.py"))
            .arg(root.path())
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting hub_server.py");
        let mut server = Self { child, _root: root, port: 0 };
        server.port = wait::poll("the Hub server's port", Duration::from_secs(30), || {
            std::fs::read_to_string(&port_file).map_err(|e| e.to_string())?.trim().parse::<u16>().map_err(|e| e.to_string())
        });
        server.control(json!({"private": {"test/Private": TOKEN}, "page_size": 4}));
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn http(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap()
    }

    /// Sets the server's test controls (see hub_server.py).
    pub fn control(&self, v: Value) {
        self.http("POST", "/_control", Some(&v));
    }

    /// The requests seen so far.
    pub fn log(&self) -> Vec<Value> {
        self.http("GET", "/_log", None).as_array().unwrap().clone()
    }
}

fn pull_command(hub: &HubServer, store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwenedge"));
    c.args(["model", "pull", "--store"]).arg(store).args(args);
    c.env("HF_ENDPOINT", hub.endpoint()).env("HF_TOKEN", TOKEN).env_remove("QWENEDGE__HUB__MODELS_DIR").env("HOME", store);
    c
}

fn pull(hub: &HubServer, store: &Path, args: &[&str]) -> Output {
    pull_command(hub, store, args).output_in_time()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir).iter().map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().to_string()).collect();
    out.sort();
    out
}

#[test]
fn a_pull_fetches_one_variant_verified_and_the_model_runs() {
    let hub = HubServer::start();
    let store = tempfile::tempdir().unwrap();
    let out = pull(&hub, store.path(), &[REPO]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = PathBuf::from(text(&out.stdout));
    assert_eq!(dir, store.path().join(REPO).join("q4"));
    let want = [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "onnx/decoder_model_merged_q4.onnx",
        "onnx/decoder_model_merged_q4.onnx_data",
        "onnx/decoder_model_merged_q4.onnx_data_1",
        "onnx/decoder_model_merged_q4.onnx_data_2",
        "onnx/embed_tokens_q4.onnx",
        "onnx/embed_tokens_q4.onnx_data",
        "qwenedge-pull.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    assert_eq!(files_under(&dir), want, "only the q4 variant's files, never the vision encoder or fp32");
    let mut engine = crate::common::ort_engine(&dir, |_| {});
    let p = &reference("tiny-a").prompts[0];
    assert_eq!(greedy(&mut engine, &p.ids, 16), p.genai_greedy.int4[..16.min(p.genai_greedy.int4.len())]);
    let log = hub.log();
    let tree_pages = log.iter().filter(|r| r["path"].as_str().unwrap().contains("/tree/")).count();
    assert!(tree_pages > 2, "the file list is paged (4 entries a page): {tree_pages} pages");
    let cdn: Vec<&Value> = log.iter().filter(|r| r["path"].as_str().unwrap().starts_with("/cdn/")).collect();
    assert!(
        !cdn.is_empty() && cdn.iter().all(|r| r["host"].as_str().unwrap().starts_with("localhost") && r["token"].is_null()),
        "the token never goes to the storage host: {cdn:?}"
    );
    let api = log.iter().find(|r| r["path"].as_str().unwrap().starts_with("/api/")).unwrap();
    assert_eq!(api["token"], format!("Bearer {TOKEN}"));

    // The same files as huggingface_hub's own download from this server.
    let reference_dir = store.path().join("reference");
    let script = format!(
        "import sys; from huggingface_hub import snapshot_download; snapshot_download({REPO:?}, endpoint=sys.argv[1], local_dir=sys.argv[2], allow_patterns=sys.argv[3:])"
    );
    let python = std::env::var("QWENEDGE_FIXTURE_PYTHON").expect("QWENEDGE_FIXTURE_PYTHON (deploy/test.sh sets it: models/venv.sh)");
    let mut c = Command::new(python);
    c.args(["-c", &script, &hub.endpoint()]).arg(&reference_dir).args(want.iter().filter(|f| **f != "qwenedge-pull.json"));
    c.env("HF_HUB_DISABLE_TELEMETRY", "1").env("HF_HUB_DISABLE_XET", "1").env("HF_HOME", store.path().join("hf-home"));
    let out = c.output_in_time();
    assert!(out.status.success(), "huggingface_hub: {}", text(&out.stderr));
    for f in want.iter().filter(|f| **f != "qwenedge-pull.json") {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(reference_dir.join(f)).unwrap(),
            "{f} differs from huggingface_hub's"
        );
    }

    // A second pull of the same commit fetches nothing.
    let before = hub.log().len();
    let again = pull(&hub, store.path(), &[REPO]);
    assert!(again.status.success() && text(&again.stderr).contains("is up to date"), "{}", text(&again.stderr));
    let fetched: Vec<Value> = hub.log()[before..].iter().filter(|r| r["path"].as_str().unwrap().contains("/resolve/")).cloned().collect();
    assert!(fetched.is_empty(), "{fetched:?}");

    // list and rm.
    let list = Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["model", "list", "--json", "--store"]).arg(store.path()).output_in_time();
    let line: Value = serde_json::from_str(text(&list.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["name"], format!("{REPO}:q4"));
    assert_eq!(PathBuf::from(line["dir"].as_str().unwrap()), dir);
    let rm = Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["model", "rm", &format!("{REPO}:q4"), "--store"])
        .arg(store.path())
        .output_in_time();
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    assert!(!dir.exists());
    let list = Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["model", "list", "--store"]).arg(store.path()).output_in_time();
    assert!(text(&list.stdout).starts_with("no models in"), "{}", text(&list.stdout));
}

#[test]
fn a_cut_transfer_resumes_and_an_interrupted_pull_leaves_no_model() {
    let hub = HubServer::start();
    let store = tempfile::tempdir().unwrap();
    let big = "onnx/decoder_model_merged_q4.onnx_data_1";
    let half = 4_000_000;
    hub.control(json!({"cut": {big: half}}));
    let out = pull(&hub, store.path(), &[REPO]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ranges: Vec<Value> =
        hub.log().iter().filter(|r| r["path"].as_str().unwrap().starts_with("/cdn/") && !r["range"].is_null()).cloned().collect();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_eq!(ranges[0]["range"], format!("bytes={half}-"));
    std::fs::remove_dir_all(store.path().join(REPO)).unwrap();

    // The process stopped mid-transfer: no model directory, the partial file kept; the next pull resumes it.
    hub.control(json!({"stall": {big: half}}));
    let interrupted = hub.log().len();
    let mut child = pull_command(&hub, store.path(), &[REPO]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let part = store.path().join(".partial/onnx-community--Tiny-A-ONNX-OPT--q4").join(format!("{big}.part"));
    wait::until("the partial file to reach the stall", Duration::from_secs(60), || std::fs::metadata(&part).is_ok_and(|m| m.len() == half));
    // SAFETY: kill on a child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    assert!(!store.path().join(REPO).exists(), "an interrupted pull leaves no model directory");
    let list = Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["model", "list", "--store"]).arg(store.path()).output_in_time();
    assert!(text(&list.stdout).starts_with("no models in"));
    let before = hub.log().len();
    let out = pull(&hub, store.path(), &[REPO]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = hub.log();
    let cdn = |r: &Value| r["path"].as_str().unwrap().starts_with("/cdn/");
    let earlier: Vec<&str> = log[interrupted..before].iter().filter(|r| cdn(r)).map(|r| r["path"].as_str().unwrap()).collect();
    let resumed: Vec<&Value> = log[before..].iter().filter(|r| cdn(r)).collect();
    assert_eq!(resumed[0]["range"], format!("bytes={half}-"), "the interrupted file resumes first: {resumed:?}");
    let again: Vec<&&Value> = resumed[1..].iter().filter(|r| earlier.contains(&r["path"].as_str().unwrap())).collect();
    assert!(again.is_empty(), "files finished before the interruption are not fetched again: {again:?}");
    let mut engine = crate::common::ort_engine(&store.path().join(REPO).join("q4"), |_| {});
    let p = &reference("tiny-a").prompts[0];
    assert_eq!(greedy(&mut engine, &p.ids, 8), p.genai_greedy.int4[..8], "the resumed file is whole");
}

#[test]
fn bad_pulls_say_so_in_one_line() {
    let hub = HubServer::start();
    let store = tempfile::tempdir().unwrap();
    // The refusal is one line: the whole output when nothing was fetched, the last line after
    // the progress of the files fetched otherwise.
    let refused = |out: &Output, whole: bool, needles: &[&str]| {
        let all = text(&out.stderr);
        assert!(!out.status.success(), "{all}");
        let err = all.lines().last().unwrap_or_default();
        assert!(!whole || all.lines().count() == 1, "{all}");
        assert!(err.starts_with("qwenedge: "), "{all}");
        for n in needles {
            assert!(err.contains(n), "{n:?} not in: {err}");
        }
        assert!(!store.path().join(REPO).join("q4").exists(), "a failed pull leaves no model directory");
    };
    hub.control(json!({"corrupt": ["onnx/embed_tokens_q4.onnx_data"]}));
    refused(&pull(&hub, store.path(), &[REPO]), false, &["onnx/embed_tokens_q4.onnx_data", "sha256", "the download was removed"]);
    assert!(!store.path().join(".partial/onnx-community--Tiny-A-ONNX-OPT--q4/onnx/embed_tokens_q4.onnx_data.part").exists());
    hub.control(json!({"corrupt": []}));
    refused(&pull(&hub, store.path(), &["onnx-community/Nope"]), true, &["onnx-community/Nope: no such repository"]);
    refused(&pull(&hub, store.path(), &[REPO, "--variant", "fp16"]), true, &["no variant 'fp16'", "q4, fp32"]);
    refused(&pull(&hub, store.path(), &[REPO, "--revision", "v9"]), true, &["no such revision 'v9'"]);
    refused(&pull(&hub, store.path(), &["test/Bnb4-Only"]), true, &["no variant this engine runs", "bnb4"]);
    refused(&pull(&hub, store.path(), &["test/Llama"]), false, &["model type 'llama'"]);
    let mut anonymous = pull_command(&hub, store.path(), &["test/Private"]);
    anonymous.env_remove("HF_TOKEN");
    refused(&anonymous.output_in_time(), true, &["401", "HF_TOKEN"]);
    let out = pull(&hub, store.path(), &["test/Private"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The corrupt file was fetched again in full by the later pull of the same model.
    let out = pull(&hub, store.path(), &[REPO]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn home_assistants_ollama_client_pulls_a_model_and_chats_with_it() {
    use crate::common::daemon::Daemon;
    use crate::common::mqtt::free_port;
    let hub = HubServer::start();
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "[http]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\n[hub]\nendpoint = {:?}\nmodels_dir = {:?}\n\n[hub.aliases]\n\"tiny:a\" = {REPO:?}\n",
        hub.endpoint(),
        store.path().display().to_string()
    );
    let d = Daemon::start(&extra);
    let base = format!("http://127.0.0.1:{port}");
    let figures = crate::common::clients::run("check_pull.py", &["--base-url", &base, "--repo", REPO, "--alias", "tiny:a"], &d);
    eprintln!("check_pull: {figures}");
    assert!(figures["error"].as_str().unwrap().contains("Does-Not-Exist"), "{figures}");
    let status = d.status();
    assert_eq!(status["model"]["id"], format!("{REPO}:q4"), "{status}");
    assert_eq!(status["model"]["layout"], "transformers.js, embedding + decoder, q4", "{status}");
    assert!(store.path().join(REPO).join("q4/qwenedge-pull.json").exists());
}
