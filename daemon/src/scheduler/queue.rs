//! The waiting room in front of the engine: two FIFO lanes (interactive before background) with
//! a shared capacity. Pure data structure, no I/O or locking, so its rules are unit-tested.

use std::collections::VecDeque;

use crate::api::Priority;

/// Something that waits in the queue.
pub trait Queued {
    /// Its scheduling class.
    fn priority(&self) -> Priority;
}

/// Waiting requests by priority.
#[derive(Debug)]
pub struct JobQueue<J> {
    interactive: VecDeque<J>,
    background: VecDeque<J>,
}

impl<J> Default for JobQueue<J> {
    fn default() -> Self {
        Self { interactive: VecDeque::new(), background: VecDeque::new() }
    }
}

impl<J: Queued> JobQueue<J> {
    /// Adds a job at the back of its lane.
    pub fn push(&mut self, job: J) {
        match job.priority() {
            Priority::Interactive => self.interactive.push_back(job),
            Priority::Background => self.background.push_back(job),
        }
    }

    /// The oldest job of `priority`.
    pub fn pop(&mut self, priority: Priority) -> Option<J> {
        match priority {
            Priority::Interactive => self.interactive.pop_front(),
            Priority::Background => self.background.pop_front(),
        }
    }

    /// Waiting jobs, per lane.
    pub fn counts(&self) -> (usize, usize) {
        (self.interactive.len(), self.background.len())
    }

    /// Waiting jobs in all.
    pub fn len(&self) -> usize {
        self.interactive.len() + self.background.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns every job for which `remove` says true, keeping the others' order.
    pub fn take_where(&mut self, mut remove: impl FnMut(&J) -> bool) -> Vec<J> {
        let mut out = Vec::new();
        for lane in [&mut self.interactive, &mut self.background] {
            let mut kept = VecDeque::with_capacity(lane.len());
            for job in lane.drain(..) {
                if remove(&job) {
                    out.push(job);
                } else {
                    kept.push_back(job);
                }
            }
            *lane = kept;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct J(u32, Priority);

    impl Queued for J {
        fn priority(&self) -> Priority {
            self.1
        }
    }

    #[test]
    fn lanes_are_fifo_and_separate() {
        let mut q = JobQueue::default();
        q.push(J(1, Priority::Background));
        q.push(J(2, Priority::Interactive));
        q.push(J(3, Priority::Interactive));
        assert_eq!(q.counts(), (2, 1));
        assert_eq!(q.pop(Priority::Interactive), Some(J(2, Priority::Interactive)));
        assert_eq!(q.pop(Priority::Interactive), Some(J(3, Priority::Interactive)));
        assert_eq!(q.pop(Priority::Interactive), None);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn take_where_keeps_order_of_the_rest() {
        let mut q = JobQueue::default();
        for i in 0..6 {
            q.push(J(i, if i % 2 == 0 { Priority::Interactive } else { Priority::Background }));
        }
        let taken = q.take_where(|j| j.0 % 3 == 0);
        assert_eq!(taken, vec![J(0, Priority::Interactive), J(3, Priority::Background)]);
        assert_eq!(q.pop(Priority::Interactive), Some(J(2, Priority::Interactive)));
        assert_eq!(q.pop(Priority::Background), Some(J(1, Priority::Background)));
        assert_eq!(q.len(), 2);
    }
}
