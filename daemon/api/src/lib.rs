//! The wire types every transport speaks: requests (built only through validating
//! constructors, so no transport can skip a limit), the events sent back, the `status` report,
//! and the parser of the socket's JSON lines. This is the lowest layer: it depends on no other
//! member of the workspace, and everything above may use it (the engine does not: it has its
//! own domain types, converted in the scheduler).

mod event;
mod parse;
mod request;
mod sampling;
mod status;

pub use event::{ErrorCode, Event, EventBody, FinishReason, IntentSource, IntentSummary, RequestTimings, Slot, SlotRange, Usage};
pub use parse::{parse_request, BadRequest};
pub use request::{
    FieldError, GenerateRequest, GenerateSpec, Limits, Op, Place, Priority, Prompt, Request, RequestId, ResponseFormat, ToolChoice,
    MAX_DEADLINE_MS, MAX_ID_LEN, MAX_INTENT_FILTER, MAX_INTENT_TEXT, MAX_STOP, MAX_STOP_LEN, MAX_TOOLS, MAX_TOOL_NAME,
};
pub use sampling::Sampling;
pub use status::{
    BackendReport, BudgetReport, CacheReport, DeclinedNodes, HomeReport, HomeSync, ModelReport, Phase, PlacementReport, ProviderNodes,
    ProviderReport, QueueReport, RequestCounts, RunningReport, SequenceReport, SequenceState, StatusReport, ThermalLevel,
    ThermalThresholds,
};
