//! Which of a repository's files a variant needs — pure, from the file list alone. In the
//! transformers.js layout (`config.json` + `onnx/`) a variant is a file suffix (`_q4`, none for
//! fp32): its decoder (`decoder_model_merged` or `model`), its embedding graph, their sharded
//! external data and the text files at the top; never the vision or audio encoders or another
//! variant's graphs. In onnxruntime-genai's layout a variant is a folder holding a
//! `genai_config.json`, taken whole less its vision and speech graphs.

use qwenedge_engine::model::hub::VARIANTS;

use crate::api::RepoFile;

/// The graphs of the transformers.js layout a text model needs.
const GRAPH_STEMS: &[&str] = &["decoder_model_merged", "embed_tokens", "model"];
/// Prefixes of graphs a text model never needs (genai's split layout).
const SKIPPED_GRAPHS: &[&str] = &["vision", "speech", "audio"];

/// The files of one variant, with their paths in the model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The variant's name (`q4`, `fp32`, … or a genai folder's path).
    pub variant: String,
    /// The files and where each goes in the model directory (relative path).
    pub files: Vec<(RepoFile, String)>,
}

/// Why no selection could be made: the message says what the repository has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoVariant(pub String);

/// The suffix of `file_name` (`decoder_model_merged_q4.onnx_data_1` → `Some(("decoder_model_merged", "_q4"))`)
/// when it is one of the graphs a text model needs or their external data.
fn graph_suffix(file_name: &str) -> Option<(&'static str, &str)> {
    let base = match file_name.find(".onnx") {
        Some(i) => {
            let rest = &file_name[i..];
            let data_ok = rest == ".onnx"
                || rest == ".onnx_data"
                || rest.strip_prefix(".onnx_data_").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !data_ok {
                return None;
            }
            &file_name[..i]
        }
        None => return None,
    };
    // The longest stem first: `model` is a prefix of neither other stem, but keep it general.
    let mut stems: Vec<&'static str> = GRAPH_STEMS.to_vec();
    stems.sort_by_key(|s| std::cmp::Reverse(s.len()));
    stems.into_iter().find_map(|stem| base.strip_prefix(stem).map(|suffix| (stem, suffix)))
}

fn is_text_file(path: &str) -> bool {
    !path.contains('/') && (path.ends_with(".json") || path.ends_with(".jinja") || path.ends_with(".txt")) && path != "README.txt"
}

/// The variants present in the transformers.js layout, in [`VARIANTS`] order, and the suffixes
/// present that this engine has no name for.
fn hub_variants(files: &[RepoFile]) -> (Vec<&'static (&'static str, &'static str)>, Vec<String>) {
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for f in files {
        let Some(name) = f.path.strip_prefix("onnx/").filter(|n| !n.contains('/')) else { continue };
        let Some((stem, suffix)) = graph_suffix(name) else { continue };
        if stem == "embed_tokens" || !name.ends_with(".onnx") {
            continue;
        }
        match VARIANTS.iter().find(|(_, s)| *s == suffix) {
            Some(v) if !known.contains(&v) => known.push(v),
            Some(_) => {}
            None => {
                let label = suffix.trim_start_matches('_').to_string();
                if !unknown.contains(&label) {
                    unknown.push(label);
                }
            }
        }
    }
    known.sort_by_key(|v| VARIANTS.iter().position(|x| x == *v));
    (known, unknown)
}

/// Chooses the files of `variant` (`None`: `q4` where present, else the first of [`VARIANTS`]).
pub fn select(files: &[RepoFile], variant: Option<&str>) -> Result<Selection, NoVariant> {
    let genai: Vec<&str> = files
        .iter()
        .filter_map(|f| f.path.strip_suffix("genai_config.json"))
        .filter(|dir| dir.is_empty() || dir.ends_with('/'))
        .map(|dir| dir.trim_end_matches('/'))
        .collect();
    if files.iter().any(|f| f.path == "config.json") && files.iter().any(|f| f.path.starts_with("onnx/")) && !genai.contains(&"") {
        return select_hub(files, variant);
    }
    if !genai.is_empty() {
        return select_genai(files, &genai, variant);
    }
    Err(NoVariant(
        "holds no ONNX model this engine reads (no onnx/decoder_model_merged*.onnx or onnx/model*.onnx with config.json, no genai_config.json)"
            .into(),
    ))
}

fn select_hub(files: &[RepoFile], variant: Option<&str>) -> Result<Selection, NoVariant> {
    let (present, unknown) = hub_variants(files);
    let names: Vec<&str> = present.iter().map(|(n, _)| *n).collect();
    let has = || {
        let mut all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        all.extend(unknown.iter().map(|u| format!("{u} (not run by this engine)")));
        if all.is_empty() {
            "no decoder graph".to_string()
        } else {
            format!("it has {}", all.join(", "))
        }
    };
    let chosen = match variant {
        Some(v) => match present.iter().find(|(n, _)| *n == v) {
            Some(found) => *found,
            None if VARIANTS.iter().any(|(n, _)| *n == v) => return Err(NoVariant(format!("no variant '{v}' ({})", has()))),
            None => {
                let known: Vec<&str> = VARIANTS.iter().map(|(n, _)| *n).collect();
                return Err(NoVariant(format!("'{v}' is not a variant this engine runs (known: {}; {})", known.join(", "), has())));
            }
        },
        None => *present.first().ok_or_else(|| NoVariant(format!("no variant this engine runs ({})", has())))?,
    };
    let (name, suffix) = *chosen;
    let chosen_files = files
        .iter()
        .filter(|f| {
            if is_text_file(&f.path) {
                return true;
            }
            let Some(file) = f.path.strip_prefix("onnx/").filter(|n| !n.contains('/')) else { return false };
            graph_suffix(file).is_some_and(|(_, s)| s == suffix)
        })
        .map(|f| (f.clone(), f.path.clone()))
        .collect();
    Ok(Selection { variant: name.to_string(), files: chosen_files })
}

fn select_genai(files: &[RepoFile], folders: &[&str], variant: Option<&str>) -> Result<Selection, NoVariant> {
    let list = || folders.iter().map(|f| if f.is_empty() { "." } else { f }).collect::<Vec<_>>().join(", ");
    let folder = match (variant, folders) {
        (None, [only]) => *only,
        (None, _) => return Err(NoVariant(format!("holds several onnxruntime-genai models; choose one with --variant ({})", list()))),
        (Some(v), _) => {
            let matches: Vec<&&str> = folders.iter().filter(|f| **f == v || f.rsplit('/').next() == Some(v)).collect();
            match matches.as_slice() {
                [one] => **one,
                [] => return Err(NoVariant(format!("no variant '{v}' (the genai models here: {})", list()))),
                _ => return Err(NoVariant(format!("'{v}' names several folders; give the whole path ({})", list()))),
            }
        }
    };
    let prefix = if folder.is_empty() { String::new() } else { format!("{folder}/") };
    let chosen_files = files
        .iter()
        .filter_map(|f| {
            let rel = f.path.strip_prefix(&prefix)?;
            let name = rel.rsplit('/').next().unwrap_or(rel);
            let skipped =
                rel.contains('/') || SKIPPED_GRAPHS.iter().any(|s| name.starts_with(s)) || name == "README.md" || name.starts_with('.');
            (!skipped).then(|| (f.clone(), rel.to_string()))
        })
        .collect();
    Ok(Selection { variant: if folder.is_empty() { "genai".into() } else { folder.to_string() }, files: chosen_files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(paths: &[&str]) -> Vec<RepoFile> {
        paths.iter().map(|p| RepoFile { path: p.to_string(), size: 1, blob_id: String::new(), lfs_sha256: None }).collect()
    }

    fn paths(s: &Selection) -> Vec<&str> {
        s.files.iter().map(|(_, to)| to.as_str()).collect()
    }

    const OPT: &[&str] = &[
        ".gitattributes",
        "README.md",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "onnx/embed_tokens.onnx",
        "onnx/embed_tokens.onnx_data",
        "onnx/embed_tokens_q4.onnx",
        "onnx/embed_tokens_q4f16.onnx",
        "onnx/decoder_model_merged.onnx",
        "onnx/decoder_model_merged.onnx_data",
        "onnx/decoder_model_merged.onnx_data_1",
        "onnx/decoder_model_merged_q4.onnx",
        "onnx/decoder_model_merged_q4.onnx_data",
        "onnx/decoder_model_merged_q4f16.onnx",
        "onnx/decoder_model_merged_bnb4.onnx",
        "onnx/vision_encoder.onnx",
        "onnx/vision_encoder_q4.onnx",
    ];

    #[test]
    fn a_variant_takes_its_graphs_their_shards_and_the_text_files_only() {
        let s = select(&files(OPT), None).unwrap();
        assert_eq!(s.variant, "q4");
        assert_eq!(
            paths(&s),
            [
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "chat_template.jinja",
                "preprocessor_config.json",
                "onnx/embed_tokens_q4.onnx",
                "onnx/decoder_model_merged_q4.onnx",
                "onnx/decoder_model_merged_q4.onnx_data"
            ]
        );
        let fp32 = select(&files(OPT), Some("fp32")).unwrap();
        let graphs: Vec<&str> = paths(&fp32).into_iter().filter(|p| p.starts_with("onnx/")).collect();
        assert_eq!(
            graphs,
            [
                "onnx/embed_tokens.onnx",
                "onnx/embed_tokens.onnx_data",
                "onnx/decoder_model_merged.onnx",
                "onnx/decoder_model_merged.onnx_data",
                "onnx/decoder_model_merged.onnx_data_1"
            ]
        );
    }

    #[test]
    fn a_missing_or_unknown_variant_says_what_the_repository_has() {
        let e = select(&files(OPT), Some("fp16")).unwrap_err().0;
        assert_eq!(e, "no variant 'fp16' (it has q4, fp32, q4f16, bnb4 (not run by this engine))");
        let e = select(&files(OPT), Some("int3")).unwrap_err().0;
        assert!(e.starts_with("'int3' is not a variant this engine runs (known: q4, fp32"), "{e}");
        let e = select(&files(&["config.json", "onnx/decoder_model_merged_bnb4.onnx"]), None).unwrap_err().0;
        assert_eq!(e, "no variant this engine runs (it has bnb4 (not run by this engine))");
        let e = select(&files(&["README.md", "model.safetensors", "config.json"]), None).unwrap_err().0;
        assert!(e.starts_with("holds no ONNX model"), "{e}");
    }

    #[test]
    fn the_text_layout_is_one_graph() {
        let s = select(&files(&["config.json", "tokenizer.json", "onnx/model_q4.onnx", "onnx/model.onnx", "onnx/model.onnx_data"]), None)
            .unwrap();
        assert_eq!(paths(&s), ["config.json", "tokenizer.json", "onnx/model_q4.onnx"]);
    }

    #[test]
    fn genai_folders_are_variants() {
        let repo = files(&[
            "README.md",
            "cpu-int4/genai_config.json",
            "cpu-int4/model.onnx",
            "cpu-int4/model.onnx.data",
            "cpu-int4/tokenizer.json",
            "cpu-int4/vision.onnx",
            "cuda-fp16/genai_config.json",
            "cuda-fp16/text.onnx",
        ]);
        let e = select(&repo, None).unwrap_err().0;
        assert!(e.contains("choose one with --variant (cpu-int4, cuda-fp16)"), "{e}");
        let s = select(&repo, Some("cpu-int4")).unwrap();
        assert_eq!(paths(&s), ["genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json"]);
        let root = files(&["genai_config.json", "embedding.onnx", "text.onnx", "vision.onnx", "tokenizer.json"]);
        assert_eq!(paths(&select(&root, None).unwrap()), ["genai_config.json", "embedding.onnx", "text.onnx", "tokenizer.json"]);
    }
}
