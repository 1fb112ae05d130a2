//! Where the end-to-end tests are. They live in `tests/e2e/` and `tests/faults/` (two test
//! binaries, one module per area) and are built only with the `e2e`
//! feature, because they need what a fresh clone does not have: the model fixtures generated
//! from transformers (Python, torch), ONNX Runtime's library, the client libraries users' software
//! uses (`openai`, `ollama`, `wyoming`, …) and Mosquitto. `deploy/test.sh` prepares all of it
//! (cached) and runs them. Without the feature this module's one test is reported as ignored,
//! with the command to run; with it, the test checks that the fixtures are there.

#[test]
#[cfg_attr(
    not(feature = "e2e"),
    ignore = "the end-to-end tests (tests/e2e, tests/faults) were not built: they need the model fixtures, ONNX Runtime, the Python clients and Mosquitto — run deploy/test.sh, which prepares them and runs every test"
)]
fn the_end_to_end_tests_have_their_fixtures() {
    let dir = std::env::var_os("QWENEDGE_FIXTURES").map(std::path::PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("QWENEDGE_CACHE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/qwenedge"));
        cache.join("fixtures/current")
    });
    assert!(
        dir.join("manifest.json").is_file(),
        "the end-to-end tests are built but their fixtures are not at {} — run deploy/test.sh (or python models/fixtures/generate.py)",
        dir.display()
    );
}
