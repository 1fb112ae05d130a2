//! Which execution provider runs which nodes of the session's graph, read from ONNX Runtime
//! after the session is created (`session.record_ep_graph_assignment_info`), so a user sees
//! whether an accelerator took any part of the model: "QNN took 2 of 687 nodes".

use std::collections::BTreeMap;
use std::ffi::{c_char, CStr};

use ort::session::Session;
use ort::AsPointer;
use serde::{Deserialize, Serialize};

use crate::backend::providers::ProviderReport;

/// The session option that makes ONNX Runtime record the assignment.
pub(super) const RECORD_KEY: &str = "session.record_ep_graph_assignment_info";

/// The nodes one execution provider took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpNodes {
    /// The configured name (`qnn`, `cpu`), or ONNX Runtime's name for one not configured.
    pub ep: String,
    /// Nodes it runs.
    pub nodes: usize,
    /// Of which, by operator type (`MatMulNBits`: 96).
    pub op_types: BTreeMap<String, usize>,
    /// The nodes it did not take, by operator type and the reason it gave (only where the
    /// provider says why: QNN does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declined: Vec<Declined>,
}

/// Nodes of one operator type a provider did not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declined {
    /// Operator type.
    pub op_type: String,
    /// The provider's reason (`Cannot get shape`: a dynamic shape).
    pub reason: String,
    /// How many nodes.
    pub nodes: usize,
}

/// Groups the providers' messages about declined nodes ("Validation FAILED for 1 nodes in
/// OrtNodeUnit (MatMulNBits) : … REASON : Cannot get shape") by operator type and reason.
pub(super) fn declined(messages: &[String]) -> Vec<Declined> {
    // ONNX Runtime asks a provider twice (before and after its layout transform): one node,
    // one count.
    let mut seen = std::collections::BTreeSet::new();
    let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in messages {
        let node = m
            .split("Node name: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .or_else(|| m.split(" node `").nth(1).and_then(|r| r.split('`').next()))
            .unwrap_or(m);
        if !seen.insert(node.to_string()) {
            continue;
        }
        let op = m
            .split("Operator type: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .or_else(|| m.split("OrtNodeUnit (").nth(1).and_then(|r| r.split(')').next()))
            .unwrap_or("?");
        let Some(reason) = m.split("REASON").nth(1) else { continue };
        let reason = reason.trim_start_matches([' ', ':']).lines().next().unwrap_or("").trim();
        // "… not supported by QNN EP.LinearAttention node `…` will not be assigned …": the
        // sentence before the node's name.
        let cut = reason.char_indices().find(|&(i, c)| c == '.' && reason[i + 1..].starts_with(|n: char| !n.is_ascii_digit()));
        let reason = cut.map_or(reason, |(i, _)| &reason[..i]).trim();
        *by.entry((op.to_string(), reason.to_string())).or_default() += 1;
    }
    let mut out: Vec<Declined> = by.into_iter().map(|((op_type, reason), nodes)| Declined { op_type, reason, nodes }).collect();
    out.sort_by(|a, b| b.nodes.cmp(&a.nodes).then(a.op_type.cmp(&b.op_type)));
    out
}

/// How the graph's nodes are spread over the providers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Nodes in the session's (optimized) graph.
    pub total_nodes: usize,
    /// Per provider, in the order of the configured providers, CPU last.
    pub providers: Vec<EpNodes>,
}

impl Placement {
    /// One line: `qnn took 2 of 687 nodes (Cast 1, Gather 1); cpu 685`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for p in &self.providers {
            if p.ep == "cpu" && !parts.is_empty() {
                parts.push(format!("cpu {}", p.nodes));
                continue;
            }
            let mut ops: Vec<(&String, &usize)> = p.op_types.iter().collect();
            ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let shown: Vec<String> = ops.iter().take(4).map(|(op, n)| format!("{op} {n}")).collect();
            let more = if ops.len() > 4 { ", …" } else { "" };
            let detail = if shown.is_empty() { String::new() } else { format!(" ({}{more})", shown.join(", ")) };
            parts.push(format!("{} took {} of {} nodes{detail}", p.ep, p.nodes, self.total_nodes));
        }
        parts.join("; ")
    }
}

/// A C string from ONNX Runtime, or `None` when the call failed.
///
/// # Safety
/// `f` must be one of ONNX Runtime's getters that writes a string owned by the session.
unsafe fn string(f: impl FnOnce(*mut *const c_char) -> ort::sys::OrtStatusPtr) -> Option<String> {
    let mut out: *const c_char = std::ptr::null();
    let status = f(&mut out);
    if !status.0.is_null() {
        // SAFETY: a non-null status is owned by the caller and released once.
        unsafe { (ort::api().ReleaseStatus)(status.0) };
        return None;
    }
    // SAFETY: on success ONNX Runtime wrote a NUL-terminated string that lives as long as the
    // session.
    (!out.is_null()).then(|| unsafe { CStr::from_ptr(out) }.to_string_lossy().into_owned())
}

/// Reads the assignment of `session` (created with [`RECORD_KEY`] set), naming the providers
/// as `reports` configured them. `None` when ONNX Runtime recorded nothing.
pub(super) fn read(session: &Session, reports: &[ProviderReport]) -> Option<Placement> {
    let api = ort::api();
    let mut subgraphs: *const *const ort::sys::OrtEpAssignedSubgraph = std::ptr::null();
    let mut count = 0usize;
    // SAFETY: the session pointer is valid while `session` lives; ONNX Runtime writes an array
    // of `count` subgraph pointers owned by the session, read before this function returns.
    let status = unsafe { (api.Session_GetEpGraphAssignmentInfo)(session.ptr(), &mut subgraphs, &mut count) };
    if !status.0.is_null() {
        // SAFETY: a non-null status is ours to release.
        unsafe { (api.ReleaseStatus)(status.0) };
        return None;
    }
    if subgraphs.is_null() || count == 0 {
        return None;
    }
    let mut by_ep: BTreeMap<String, EpNodes> = BTreeMap::new();
    let mut total = 0;
    for i in 0..count {
        // SAFETY: `i < count`, within the array ONNX Runtime returned.
        let sub = unsafe { *subgraphs.add(i) };
        // SAFETY: `sub` is a subgraph of this session; the getter writes a session-owned string.
        let Some(ort_name) = (unsafe { string(|out| (api.EpAssignedSubgraph_GetEpName)(sub, out)) }) else { continue };
        let mut nodes: *const *const ort::sys::OrtEpAssignedNode = std::ptr::null();
        let mut n = 0usize;
        // SAFETY: as above; the node array is owned by the session.
        let status = unsafe { (api.EpAssignedSubgraph_GetNodes)(sub, &mut nodes, &mut n) };
        if !status.0.is_null() {
            // SAFETY: a non-null status is ours to release.
            unsafe { (api.ReleaseStatus)(status.0) };
            continue;
        }
        let ep = reports.iter().find(|r| r.ort_name == ort_name).map_or(ort_name.clone(), |r| r.name.clone());
        let ep = if ort_name == "CPUExecutionProvider" { "cpu".to_string() } else { ep };
        let entry = by_ep.entry(ep.clone()).or_insert_with(|| EpNodes { ep, nodes: 0, op_types: BTreeMap::new(), declined: Vec::new() });
        for j in 0..n {
            // SAFETY: `j < n`, within the node array of this subgraph.
            let node = unsafe { *nodes.add(j) };
            // SAFETY: `node` belongs to the session; the getter writes a session-owned string.
            let op = unsafe { string(|out| (api.EpAssignedNode_GetOperatorType)(node, out)) }.unwrap_or_else(|| "?".into());
            *entry.op_types.entry(op).or_default() += 1;
            entry.nodes += 1;
            total += 1;
        }
    }
    let order = |ep: &str| if ep == "cpu" { usize::MAX } else { reports.iter().position(|r| r.name == ep).unwrap_or(usize::MAX - 1) };
    let mut providers: Vec<EpNodes> = by_ep.into_values().collect();
    providers.sort_by_key(|p| order(&p.ep));
    for r in reports.iter().filter(|r| r.active && r.name != "cpu") {
        let i = match providers.iter().position(|p| p.ep == r.name) {
            Some(i) => i,
            None => {
                providers.insert(0, EpNodes { ep: r.name.clone(), nodes: 0, op_types: BTreeMap::new(), declined: Vec::new() });
                0
            }
        };
        providers[i].declined = declined(&r.rejections);
    }
    Some(Placement { total_nodes: total, providers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_the_accelerator_first_and_the_cpu_rest() {
        let p = Placement {
            total_nodes: 687,
            providers: vec![
                EpNodes {
                    ep: "qnn".into(),
                    nodes: 2,
                    op_types: [("Gather".to_string(), 1), ("Cast".to_string(), 1)].into(),
                    declined: Vec::new(),
                },
                EpNodes { ep: "cpu".into(), nodes: 685, op_types: [("MatMulNBits".to_string(), 685)].into(), declined: Vec::new() },
            ],
        };
        assert_eq!(p.summary(), "qnn took 2 of 687 nodes (Cast 1, Gather 1); cpu 685");
        let none = Placement {
            total_nodes: 10,
            providers: vec![EpNodes { ep: "qnn".into(), nodes: 0, op_types: BTreeMap::new(), declined: Vec::new() }],
        };
        assert_eq!(none.summary(), "qnn took 0 of 10 nodes");
    }

    #[test]
    fn declined_nodes_are_grouped_by_operator_and_reason() {
        let messages: Vec<String> = [
            "Validation FAILED for 1 nodes in OrtNodeUnit (MatMulNBits) :\n\tOperator type: MatMulNBits Node name: /a/MatMul_Q4 Node index: 9\n\tREASON : Cannot get shape\n",
            "Validation FAILED for 1 nodes in OrtNodeUnit (MatMulNBits) :\n\tOperator type: MatMulNBits Node name: /b/MatMul_Q4 Node index: 10\n\tREASON : Cannot get shape\n",
            "Validation FAILED for 1 nodes in OrtNodeUnit (MatMulNBits) :\n\tOperator type: MatMulNBits Node name: /b/MatMul_Q4 Node index: 10\n\tREASON : Cannot get shape\n",
            "Validation FAILED for 1 nodes in OrtNodeUnit (LinearAttention) :\n\tREASON : Operators of type `LinearAttention` are not supported by QNN EP.LinearAttention node `/l` will not be assigned to QNN EP.",
        ]
        .map(String::from)
        .into();
        let d = declined(&messages);
        assert_eq!(
            d,
            vec![
                Declined { op_type: "MatMulNBits".into(), reason: "Cannot get shape".into(), nodes: 2 },
                Declined {
                    op_type: "LinearAttention".into(),
                    reason: "Operators of type `LinearAttention` are not supported by QNN EP".into(),
                    nodes: 1
                },
            ]
        );
    }
}
