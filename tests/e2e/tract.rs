//! The tract backend against ONNX Runtime: every contrib op the Qwen3.5 exports use, run as a
//! one-node graph on random inputs by both runtimes, and greedy generation on every fixture.

use crate::common::{greedy, model_dir, reference, CONFIGS};
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use prost::Message;
use qwenedge_engine::backend::ort::{OrtBackend, OrtOptions};
use qwenedge_engine::backend::tract::{ops, TractBackend, TractOptions};
use qwenedge_engine::backend::{runtime, Backend, Logits, LogitsWanted};
use qwenedge_engine::Engine;
use rand::{Rng, SeedableRng};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// One input of a single-node test graph.
enum Input {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
    I32(Vec<usize>, Vec<i32>),
    /// An initializer of the graph rather than a fed input.
    ConstU8(Vec<usize>, Vec<u8>),
    /// An initializer of the graph rather than a fed input.
    ConstF32(Vec<usize>, Vec<f32>),
}

/// One attribute of the node.
enum Attr {
    F(&'static str, f32),
    I(&'static str, i64),
    S(&'static str, &'static str),
    Ints(&'static str, Vec<i64>),
}

fn randn(rng: &mut impl Rng, shape: &[usize]) -> Input {
    let n = shape.iter().product();
    Input::F32(shape.to_vec(), (0..n).map(|_| rng.random_range(-1.0f32..1.0) * 2.0).collect())
}

fn value_info(name: &str, elem: i32, shape: Option<&[usize]>) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let shape = shape.map(|s| pb::TensorShapeProto {
        dim: s.iter().map(|&d| Dimension { value: Some(Value::DimValue(d as i64)), ..Default::default() }).collect(),
    });
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type: elem, shape })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn graph_bytes(op: &str, inputs: &[Input], attrs: &[Attr], outputs: usize) -> Vec<u8> {
    let names: Vec<String> = (0..inputs.len()).map(|i| format!("in{i}")).collect();
    let infos = inputs
        .iter()
        .zip(&names)
        .filter_map(|(x, n)| match x {
            Input::F32(s, _) => Some(value_info(n, 1, Some(s))),
            Input::I32(s, _) => Some(value_info(n, 6, Some(s))),
            Input::I64(s, _) => Some(value_info(n, 7, Some(s))),
            Input::ConstU8(..) | Input::ConstF32(..) => None,
        })
        .collect();
    let dims = |s: &[usize]| s.iter().map(|&d| d as i64).collect::<Vec<_>>();
    let initializer = inputs
        .iter()
        .zip(&names)
        .filter_map(|(x, n)| match x {
            Input::ConstU8(s, d) => {
                Some(pb::TensorProto { name: n.clone(), dims: dims(s), data_type: 2, raw_data: d.clone(), ..Default::default() })
            }
            Input::ConstF32(s, d) => {
                Some(pb::TensorProto { name: n.clone(), dims: dims(s), data_type: 1, float_data: d.clone(), ..Default::default() })
            }
            _ => None,
        })
        .collect();
    let attribute = attrs
        .iter()
        .map(|a| match a {
            Attr::F(n, v) => pb::AttributeProto { name: (*n).into(), r#type: 1, f: *v, ..Default::default() },
            Attr::I(n, v) => pb::AttributeProto { name: (*n).into(), r#type: 2, i: *v, ..Default::default() },
            Attr::S(n, v) => pb::AttributeProto { name: (*n).into(), r#type: 3, s: v.as_bytes().to_vec(), ..Default::default() },
            Attr::Ints(n, v) => pb::AttributeProto { name: (*n).into(), r#type: 7, ints: v.clone(), ..Default::default() },
        })
        .collect();
    let outs: Vec<String> = (0..outputs).map(|i| format!("out{i}")).collect();
    let node = pb::NodeProto {
        input: names,
        output: outs.clone(),
        name: format!("{op}_under_test"),
        op_type: op.into(),
        domain: if op == "SimplifiedLayerNormalization" { String::new() } else { "com.microsoft".into() },
        attribute,
        ..Default::default()
    };
    let graph = pb::GraphProto {
        node: vec![node],
        name: "g".into(),
        input: infos,
        initializer,
        output: outs.iter().map(|o| value_info(o, 1, None)).collect(),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 10,
        opset_import: vec![
            pb::OperatorSetIdProto { domain: String::new(), version: 21 },
            pb::OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 },
        ],
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

fn run_ort(bytes: &[u8], inputs: &[Input], outputs: usize) -> Vec<Vec<f32>> {
    let rt = runtime::load(None).expect("ONNX Runtime library (set ORT_DYLIB_PATH)");
    let mut session = Session::builder(&rt.env).unwrap().commit_from_memory(bytes).unwrap();
    let mut feed: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::new();
    for (i, x) in inputs.iter().enumerate() {
        let name = format!("in{i}");
        let v: ort::session::SessionInputValue<'static> = match x {
            Input::F32(s, d) => OrtTensor::from_array((s.clone(), d.clone())).unwrap().into(),
            Input::I64(s, d) => OrtTensor::from_array((s.clone(), d.clone())).unwrap().into(),
            Input::I32(s, d) => OrtTensor::from_array((s.clone(), d.clone())).unwrap().into(),
            Input::ConstU8(..) | Input::ConstF32(..) => continue,
        };
        feed.push((name, v));
    }
    let out = session.run(feed).unwrap();
    (0..outputs).map(|i| out[format!("out{i}").as_str()].try_extract_tensor::<f32>().unwrap().1.to_vec()).collect()
}

fn run_tract(bytes: &[u8], inputs: &[Input]) -> Vec<Vec<f32>> {
    let mut onnx = tract_onnx::onnx();
    ops::register(&mut onnx);
    let model = onnx.model_for_read(&mut &*bytes).unwrap().into_optimized().unwrap().into_runnable().unwrap();
    let values: TVec<TValue> = inputs
        .iter()
        .filter_map(|x| match x {
            Input::F32(s, d) => Some(Tensor::from_shape(s, d).unwrap()),
            Input::I64(s, d) => Some(Tensor::from_shape(s, d).unwrap()),
            Input::I32(s, d) => Some(Tensor::from_shape(s, d).unwrap()),
            Input::ConstU8(..) | Input::ConstF32(..) => None,
        })
        .map(|t| t.into_tvalue())
        .collect();
    model.run(values).unwrap().iter().map(|t| t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()).collect()
}

/// Runs `op` in both runtimes and returns the largest absolute difference over all outputs.
fn compare(op: &str, inputs: &[Input], attrs: &[Attr], outputs: usize) -> f32 {
    let bytes = graph_bytes(op, inputs, attrs, outputs);
    let (want, got) = (run_ort(&bytes, inputs, outputs), run_tract(&bytes, inputs));
    assert_eq!(want.len(), got.len(), "{op}: output count");
    want.iter()
        .zip(&got)
        .map(|(w, g)| {
            assert_eq!(w.len(), g.len(), "{op}: output size");
            w.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
        })
        .fold(0.0, f32::max)
}

fn rng() -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(7)
}

#[test]
fn linear_attention_gate_matches_onnxruntime() {
    let r = &mut rng();
    let d = compare("LinearAttentionGate", &[randn(r, &[1, 5, 4]), randn(r, &[4]), randn(r, &[4]), randn(r, &[1, 5, 4])], &[], 2);
    assert!(d < 1e-4, "max diff {d}");
}

#[test]
fn gated_rms_norm_matches_onnxruntime() {
    let r = &mut rng();
    let d = compare("GatedRMSNorm", &[randn(r, &[1, 5, 64]), randn(r, &[16]), randn(r, &[1, 5, 64])], &[Attr::F("epsilon", 1e-6)], 1);
    assert!(d < 1e-4, "max diff {d}");
}

#[test]
fn causal_conv_with_state_matches_onnxruntime() {
    for t in [1, 6] {
        let r = &mut rng();
        let inputs = [randn(r, &[1, 12, t]), randn(r, &[12, 1, 4]), randn(r, &[12]), randn(r, &[1, 12, 3])];
        let d = compare("CausalConvWithState", &inputs, &[Attr::S("activation", "silu"), Attr::I("ndim", 1)], 2);
        assert!(d < 1e-4, "T={t}: max diff {d}");
    }
}

#[test]
fn linear_attention_matches_onnxruntime() {
    for (scale, t) in [(1.0, 5), (0.0, 1), (0.3, 3)] {
        let r = &mut rng();
        let (hk, hv, dk, dv) = (2, 4, 8, 6);
        let Input::F32(s, g) = randn(r, &[1, t, hv]) else { unreachable!() };
        let decay = Input::F32(s, g.iter().map(|x| -x.abs()).collect());
        let Input::F32(s, b) = randn(r, &[1, t, hv]) else { unreachable!() };
        let beta = Input::F32(s, b.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect());
        let inputs =
            [randn(r, &[1, t, hk * dk]), randn(r, &[1, t, hk * dk]), randn(r, &[1, t, hv * dv]), randn(r, &[1, hv, dk, dv]), decay, beta];
        let attrs = [
            Attr::I("q_num_heads", hk as i64),
            Attr::I("kv_num_heads", hv as i64),
            Attr::S("update_rule", "gated_delta"),
            Attr::F("scale", scale),
        ];
        let d = compare("LinearAttention", &inputs, &attrs, 2);
        assert!(d < 1e-4, "scale {scale} T={t}: max diff {d}");
    }
}

#[test]
fn mrotary_embedding_matches_onnxruntime() {
    for layout in [0, 1] {
        let r = &mut rng();
        let (s, n, h, half, rows) = (5, 3, 16, 4, 64);
        let pos = Input::I64(vec![3, 1, s], (0..3 * s).map(|_| r.random_range(0..rows as i64)).collect());
        let (cos, sin): (Vec<f32>, Vec<f32>) = (0..rows * half)
            .map(|i| {
                let a = (i / half) as f32 / 10000f32.powf((i % half) as f32 / half as f32);
                (a.cos(), a.sin())
            })
            .unzip();
        let inputs = [randn(r, &[1, s, n * h]), pos, Input::F32(vec![rows, half], cos), Input::F32(vec![rows, half], sin)];
        let attrs = [
            Attr::I("num_heads", n as i64),
            Attr::I("rotary_embedding_dim", 2 * half as i64),
            Attr::Ints("mrope_section", vec![2, 1, 1]),
            Attr::I("mrope_layout", layout),
        ];
        let d = compare("MRotaryEmbedding", &inputs, &attrs, 1);
        assert!(d < 1e-4, "layout {layout}: max diff {d}");
    }
}

#[test]
fn group_query_attention_matches_onnxruntime_for_prompt_decode_and_chunk() {
    for (past, s) in [(0, 5), (7, 1), (7, 3)] {
        let r = &mut rng();
        let (nq, nkv, d) = (4, 2, 8);
        let total = past + s;
        let inputs = [
            randn(r, &[1, s, nq * d]),
            randn(r, &[1, s, nkv * d]),
            randn(r, &[1, s, nkv * d]),
            randn(r, &[1, nkv, past, d]),
            randn(r, &[1, nkv, past, d]),
            Input::I32(vec![1], vec![total as i32 - 1]),
            Input::I32(vec![], vec![total as i32]),
        ];
        let attrs = [Attr::I("num_heads", nq as i64), Attr::I("kv_num_heads", nkv as i64), Attr::F("scale", 0.3)];
        let diff = compare("GroupQueryAttention", &inputs, &attrs, 3);
        assert!(diff < 1e-4, "past {past} S={s}: max diff {diff}");
    }
}

/// The RMS norms agree with ONNX Runtime to the last bit on x86-64 (rows long enough for its
/// vector kernel, with and without a tail, and short rows): `MatMulNBits` after them quantizes
/// to int8, where one ulp can change an integer.
#[test]
fn rms_norms_match_onnxruntime_bit_for_bit() {
    let r = &mut rng();
    let tolerance = if cfg!(target_arch = "x86_64") { 0.0 } else { 1e-5 };
    for n in [64, 36, 5] {
        let inputs = [randn(r, &[1, 7, n]), randn(r, &[n])];
        let attrs = [Attr::F("epsilon", 1e-6), Attr::I("axis", -1)];
        let d = compare("SimplifiedLayerNormalization", &inputs, &attrs, 1);
        assert!(d <= tolerance, "SimplifiedLayerNormalization over {n}: max diff {d}");
        let inputs = [randn(r, &[1, 7, n]), randn(r, &[1, 7, n]), randn(r, &[n])];
        for outputs in [1, 4] {
            let bytes = graph_bytes("SkipSimplifiedLayerNormalization", &inputs, &[Attr::F("epsilon", 1e-6)], outputs);
            let bytes = if outputs == 4 { only_outputs(&bytes, &[0, 3]) } else { bytes };
            let (want, got) = (run_ort(&bytes, &inputs, 1), run_tract(&bytes, &inputs));
            let d = crate::common::max_abs_diff(&want[0], &got[0]);
            assert!(d <= tolerance, "SkipSimplifiedLayerNormalization over {n}, {outputs} outputs: max diff {d}");
            assert_eq!(got.len(), if outputs == 4 { 2 } else { 1 }, "outputs of tract's node");
            if let ([Input::F32(_, x), Input::F32(_, skip), _], Some(sum)) = (&inputs, got.get(1)) {
                assert!(x.iter().zip(skip).zip(sum).all(|((a, b), s)| a + b == *s), "input_skip_bias_sum");
            }
        }
    }
}

/// Keeps the node outputs at `keep` (the others become absent optional outputs).
fn only_outputs(bytes: &[u8], keep: &[usize]) -> Vec<u8> {
    let mut model = pb::ModelProto::decode(bytes).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let node = &mut graph.node[0];
    for (i, o) in node.output.iter_mut().enumerate() {
        if !keep.contains(&i) {
            o.clear();
        }
    }
    let kept: Vec<String> = node.output.iter().filter(|o| !o.is_empty()).cloned().collect();
    graph.output.retain(|v| kept.contains(&v.name));
    model.encode_to_vec()
}

/// Int4 weights, both with float32 arithmetic and with ONNX Runtime's int8 activations
/// (`accuracy_level` 4, what the builder's int4 exports ask for).
#[test]
fn matmul_nbits_and_gather_block_quantized_match_onnxruntime() {
    let r = &mut rng();
    let (n, k): (usize, usize) = (48, 96);
    let q: Vec<u8> = (0..n * k / 2).map(|_| r.random()).collect();
    let scales: Vec<f32> = (0..n * k / 32).map(|_| r.random_range(0.01f32..0.1)).collect();
    let zp: Vec<u8> = (0..n * (k / 32).div_ceil(2)).map(|_| r.random()).collect();
    for level in [0, 4] {
        for zero_points in [false, true] {
            let mut inputs = vec![
                randn(r, &[1, 3, k]),
                Input::ConstU8(vec![n, k / 32, 16], q.clone()),
                Input::ConstF32(vec![n, k / 32], scales.clone()),
            ];
            if zero_points {
                inputs.push(Input::ConstU8(vec![zp.len()], zp.clone()));
            }
            let attrs = [
                Attr::I("K", k as i64),
                Attr::I("N", n as i64),
                Attr::I("bits", 4),
                Attr::I("block_size", 32),
                Attr::I("accuracy_level", level),
            ];
            let d = compare("MatMulNBits", &inputs, &attrs, 1);
            assert!(d < 1e-4, "MatMulNBits accuracy_level {level}, zero points {zero_points}: max diff {d}");
        }
    }
    // Rows of a few distinct magnitudes, as dequantized embeddings are: `±4c` over a block
    // whose largest value is `8c` lands exactly on 63.5 when scaled to int8.
    let c = 0.0123f32;
    let tied: Vec<f32> = (0..2 * k).map(|i| c * ((i * 7 % 17) as f32 - 8.0)).collect();
    let inputs = vec![
        Input::F32(vec![1, 2, k], tied),
        Input::ConstU8(vec![n, k / 32, 16], q.clone()),
        Input::ConstF32(vec![n, k / 32], scales.clone()),
    ];
    let attrs =
        [Attr::I("K", k as i64), Attr::I("N", n as i64), Attr::I("bits", 4), Attr::I("block_size", 32), Attr::I("accuracy_level", 4)];
    let d = compare("MatMulNBits", &inputs, &attrs, 1);
    assert!(d < 1e-4, "MatMulNBits on rows with exact rounding ties: max diff {d}");
    let ids = Input::I64(vec![1, 3], vec![0, 17, 47]);
    let inputs = [Input::ConstU8(vec![n, k / 2], q.clone()), ids, Input::ConstF32(vec![n, k / 32], scales.clone())];
    let attrs = [Attr::I("bits", 4), Attr::I("block_size", 32), Attr::I("gather_axis", 0), Attr::I("quantize_axis", 1)];
    let d = compare("GatherBlockQuantized", &inputs, &attrs, 1);
    assert!(d < 1e-6, "GatherBlockQuantized: max diff {d}");
    // The tract backend hands the lookup the LM head's stored `[rows, blocks, block/2]` tensor
    // (no Reshape): the same rows come out.
    let want = run_ort(&graph_bytes("GatherBlockQuantized", &inputs, &attrs, 1), &inputs, 1);
    let stored =
        [Input::ConstU8(vec![n, k / 32, 16], q), Input::I64(vec![1, 3], vec![0, 17, 47]), Input::ConstF32(vec![n, k / 32], scales)];
    assert_eq!(run_tract(&graph_bytes("GatherBlockQuantized", &stored, &attrs, 1), &stored), want);
}

#[test]
fn greedy_tokens_match_onnxruntime_on_every_fixture() {
    for config in CONFIGS {
        for precision in ["fp32", "int4"] {
            let dir = model_dir(config, precision);
            let ort_opts = OrtOptions { threads: 2, ..Default::default() };
            let mut with_ort = Engine::load_with(&dir, |spec| Ok(Box::new(OrtBackend::load(spec, &ort_opts)?))).unwrap();
            let mut with_tract = Engine::load_with(&dir, |spec| Ok(Box::new(TractBackend::load(spec, &TractOptions::default())?))).unwrap();
            for (i, p) in reference(config).prompts.iter().enumerate() {
                let want = greedy(&mut with_ort, &p.ids, 32);
                assert_eq!(want.len(), 32);
                assert_eq!(greedy(&mut with_tract, &p.ids, 32), want, "{config} {precision} prompt {i}");
            }
        }
    }
}

/// Prefill logits of every position, a chunked prefill, a restored snapshot and a prompt the
/// backend splits agree with ONNX Runtime on the fp32 fixture (one plan serves every step shape).
#[test]
fn chunked_and_restored_steps_match_onnxruntime() {
    let dir = model_dir("tiny-a", "fp32");
    let spec = qwenedge_engine::model::ModelSpec::load(&dir).unwrap();
    let mut ort = OrtBackend::load(&spec, &OrtOptions { threads: 2, all_logits: true, ..Default::default() }).unwrap();
    let mut tract = TractBackend::load(&spec, &TractOptions { all_logits: true, ..Default::default() }).unwrap();
    let ids = &reference("tiny-a").prompts[0].ids;
    let (mut a, mut b) = (Logits::default(), Logits::default());
    let mut sa = ort.new_sequence().unwrap();
    ort.forward(&mut sa, ids, LogitsWanted::All, &mut a).unwrap();
    let mut sb = tract.new_sequence().unwrap();
    let split = ids.len() / 2;
    tract.forward(&mut sb, &ids[..split], LogitsWanted::All, &mut b).unwrap();
    let snap = tract.snapshot(&sb).unwrap();
    let mut first = b.data.clone();
    let mut sc = tract.restore(&snap, 16).unwrap();
    tract.forward(&mut sc, &ids[split..], LogitsWanted::All, &mut b).unwrap();
    first.extend_from_slice(&b.data);
    let diff = crate::common::max_abs_diff(&a.data, &first);
    assert!(diff < 1e-3, "max |Δlogit| {diff}");

    // A prompt longer than one plan run: the backend splits it, with the same last logits as
    // one run over all positions, and ONNX Runtime's within the tolerance above.
    let long: Vec<u32> = ids.iter().copied().cycle().take(700).collect();
    let mut whole = tract.new_sequence().unwrap();
    tract.forward(&mut whole, &long, LogitsWanted::All, &mut b).unwrap();
    let mut split = tract.new_sequence().unwrap();
    let mut last = Logits::default();
    tract.forward(&mut split, &long, LogitsWanted::Last, &mut last).unwrap();
    assert_eq!((split.len(), &last.data[..]), (700, &b.data[b.data.len() - last.data.len()..]));
    let mut so = ort.new_sequence().unwrap();
    ort.forward(&mut so, &long, LogitsWanted::Last, &mut a).unwrap();
    let diff = crate::common::max_abs_diff(&a.data, &last.data);
    assert!(diff < 1e-3, "700 tokens: max |Δlogit| {diff}");
}
