//! The one place that decides whether a new request may enter the queue. Transports call it
//! through the scheduler; the thermal and memory governors feed it through [`AdmissionView`].

use qwenedge_api::ThermalLevel;
use qwenedge_api::{ErrorCode, Priority};
use qwenedge_budget::BudgetState;

/// What admission looks at.
#[derive(Debug, Clone)]
pub struct AdmissionView<'a> {
    /// The daemon is stopping.
    pub draining: bool,
    /// Requests waiting now.
    pub waiting: usize,
    /// Requests that may wait.
    pub capacity: usize,
    /// The governors' latest decision.
    pub budget: &'a BudgetState,
}

/// Why a request was refused (at admission, or by the model when it was prepared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code for the client.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Admits or refuses a request of `priority`.
pub fn admit(priority: Priority, view: &AdmissionView) -> Result<(), Refusal> {
    if view.draining {
        return Err(Refusal { code: ErrorCode::ShuttingDown, message: "the daemon is shutting down".into() });
    }
    let b = view.budget;
    let temp = b.temperature_c.map_or(String::new(), |t| format!(" ({t:.1} °C)"));
    if b.level == ThermalLevel::Critical {
        return Err(Refusal { code: ErrorCode::Thermal, message: format!("the device is critically hot{temp}; no requests are taken") });
    }
    if b.level == ThermalLevel::Hot && priority == Priority::Background {
        return Err(Refusal { code: ErrorCode::Thermal, message: format!("the device is hot{temp}; only interactive requests are taken") });
    }
    if b.under_pressure && priority == Priority::Background {
        let p = b.memory_pressure.unwrap_or(0.0);
        return Err(Refusal {
            code: ErrorCode::Memory,
            message: format!("memory pressure is high ({p:.1}% stalled); background requests are refused"),
        });
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
    fn budgets_refuse_by_level_and_priority() {
        let mut budget = BudgetState { level: ThermalLevel::Hot, ..Default::default() };
        let view = |b: &BudgetState| {
            admit(Priority::Background, &AdmissionView { draining: false, waiting: 0, capacity: 4, budget: b }).map_err(|r| r.code)
        };
        assert_eq!(view(&budget), Err(ErrorCode::Thermal));
        assert!(admit(Priority::Interactive, &AdmissionView { draining: false, waiting: 0, capacity: 4, budget: &budget }).is_ok());
        budget.level = ThermalLevel::Critical;
        assert_eq!(
            admit(Priority::Interactive, &AdmissionView { draining: false, waiting: 0, capacity: 4, budget: &budget }).unwrap_err().code,
            ErrorCode::Thermal
        );
        let pressured = BudgetState { under_pressure: true, memory_pressure: Some(40.0), ..Default::default() };
        assert_eq!(view(&pressured), Err(ErrorCode::Memory));
    }

    #[test]
    fn full_queue_and_shutdown_refuse() {
        let budget = BudgetState::default();
        let open = AdmissionView { draining: false, waiting: 1, capacity: 2, budget: &budget };
        assert!(admit(Priority::Interactive, &open).is_ok());
        let full = AdmissionView { waiting: 2, ..open.clone() };
        assert_eq!(admit(Priority::Background, &full).unwrap_err().code, ErrorCode::Overloaded);
        let closing = AdmissionView { draining: true, ..open };
        assert_eq!(admit(Priority::Interactive, &closing).unwrap_err().code, ErrorCode::ShuttingDown);
    }
}
