//! The one place that decides whether a new request may enter the queue. Transports call it
//! through the scheduler; the thermal and memory governors feed it through [`AdmissionView`].

use crate::api::{ErrorCode, Priority};

/// What admission looks at.
#[derive(Debug, Clone)]
pub struct AdmissionView {
    /// The daemon is stopping.
    pub draining: bool,
    /// Requests waiting now.
    pub waiting: usize,
    /// Requests that may wait.
    pub capacity: usize,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code for the client.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
}

/// Admits or refuses a request of `priority`.
pub fn admit(_priority: Priority, view: &AdmissionView) -> Result<(), Refusal> {
    if view.draining {
        return Err(Refusal { code: ErrorCode::ShuttingDown, message: "the daemon is shutting down".into() });
    }
    if view.waiting >= view.capacity {
        return Err(Refusal {
            code: ErrorCode::Overloaded,
            message: format!("the queue is full ({} requests waiting); retry later", view.waiting),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_and_shutdown_refuse() {
        let open = AdmissionView { draining: false, waiting: 1, capacity: 2 };
        assert!(admit(Priority::Interactive, &open).is_ok());
        let full = AdmissionView { waiting: 2, ..open.clone() };
        assert_eq!(admit(Priority::Background, &full).unwrap_err().code, ErrorCode::Overloaded);
        let closing = AdmissionView { draining: true, ..open };
        assert_eq!(admit(Priority::Interactive, &closing).unwrap_err().code, ErrorCode::ShuttingDown);
    }
}
