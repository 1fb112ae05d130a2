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
    let dir = fixtures::fixtures_dir();
    assert!(
        dir.join("manifest.json").is_file(),
        "the end-to-end tests are built but their fixtures are not at {} — run deploy/test.sh (or python models/fixtures/generate.py)",
        dir.display()
    );
}

#[path = "../../tests/common/fixtures.rs"]
mod fixtures;
