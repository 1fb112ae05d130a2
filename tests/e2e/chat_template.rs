//! The model's chat template renders exactly as transformers renders it (messages, system
//! prompts, reasoning, thinking on/off, tools and tool calls, no generation prompt, unicode).

use qwenedge_engine::chat::{ChatInput, ChatTemplate};
use qwenedge_engine::model::ModelSpec;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<serde_json::Value>,
    tools: Option<Vec<serde_json::Value>>,
    add_generation_prompt: bool,
    enable_thinking: Option<bool>,
    text: String,
}

#[test]
fn renders_like_transformers() {
    let dir = crate::common::fixtures();
    let cases: Vec<Case> = serde_json::from_slice(&std::fs::read(dir.join("chat_reference.json")).unwrap()).unwrap();
    assert!(cases.iter().any(|c| c.tools.is_some()), "corpus must cover tools");
    let spec = ModelSpec::load(crate::common::model_dir("tiny-a", "fp32")).unwrap();
    let template = ChatTemplate::load(&spec).unwrap();
    for case in cases {
        let input = ChatInput {
            messages: case.messages,
            tools: case.tools,
            add_generation_prompt: case.add_generation_prompt,
            enable_thinking: case.enable_thinking,
        };
        let text = template.render(&input).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(text, case.text, "case {}", case.name);
    }
}

#[test]
fn non_thinking_generation_prompt_has_an_empty_think_block() {
    let spec = ModelSpec::load(crate::common::model_dir("tiny-a", "fp32")).unwrap();
    let template = ChatTemplate::load(&spec).unwrap();
    let input = ChatInput {
        messages: vec![serde_json::json!({"role": "user", "content": "hi"})],
        add_generation_prompt: true,
        ..Default::default()
    };
    assert!(template.render(&input).unwrap().ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
}
