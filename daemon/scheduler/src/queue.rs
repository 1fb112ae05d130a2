//! The waiting room in front of the engine: two lanes (interactive before background) with a
//! shared capacity. Within a lane, clients take turns in rounds: each client's requests wait in
//! arrival order, and each client waiting has one turn per round. A client that arrives, or
//! that had its turn and has more waiting, goes in line for the next round, behind those
//! already in line for it. So a client with a backlog holds up a newcomer by one request at
//! most, and clients that send one request at a time (a new connection each, as Wyoming and
//! many scripts do) cannot keep a client with a backlog waiting for ever. Pure data structure,
//! no I/O or locking, so its rules are unit-tested.

use std::collections::{HashMap, VecDeque};

use qwenedge_api::Priority;

/// Something that waits in the queue.
pub trait Queued {
    /// Its scheduling class.
    fn priority(&self) -> Priority;

    /// The client it came from (clients take turns).
    fn client(&self) -> u64;
}

/// One lane: each client's jobs in arrival order, and the waiting clients in turn order with
/// the round each waits for.
#[derive(Debug)]
struct Lane<J> {
    jobs: HashMap<u64, VecDeque<J>>,
    /// `(client, round)`, sorted by round (arrival order within a round).
    turns: VecDeque<(u64, u64)>,
    /// The round of the last turn given.
    round: u64,
    len: usize,
}

impl<J> Default for Lane<J> {
    fn default() -> Self {
        Self { jobs: HashMap::new(), turns: VecDeque::new(), round: 0, len: 0 }
    }
}

impl<J: Queued> Lane<J> {
    fn push(&mut self, job: J) {
        let client = job.client();
        let queue = self.jobs.entry(client).or_default();
        queue.push_back(job);
        if queue.len() == 1 {
            self.wait_for(client, self.round + 1);
        }
        self.len += 1;
    }

    /// Puts `client` in line for `round`, behind everyone waiting for that round or earlier.
    fn wait_for(&mut self, client: u64, round: u64) {
        let at = self.turns.iter().position(|(_, r)| *r > round).unwrap_or(self.turns.len());
        self.turns.insert(at, (client, round));
    }

    fn peek(&self) -> Option<&J> {
        let (client, _) = self.turns.front()?;
        self.jobs.get(client)?.front()
    }

    /// The oldest job of the first client in line that `allowed` lets go (one whose earlier
    /// request is still in progress waits, keeping its place in line).
    fn pop_where(&mut self, allowed: impl Fn(u64) -> bool) -> Option<J> {
        let at = self.turns.iter().position(|(client, _)| allowed(*client))?;
        let (client, round) = self.turns.remove(at)?;
        self.round = self.round.max(round);
        let queue = self.jobs.get_mut(&client)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.jobs.remove(&client);
        } else {
            self.wait_for(client, round + 1);
        }
        self.len -= usize::from(job.is_some());
        job
    }

    /// Puts a job that was taken back at the head of its client's line, and the client first
    /// in line.
    fn unpop(&mut self, job: J) {
        let client = job.client();
        self.turns.retain(|(c, _)| *c != client);
        let round = self.turns.front().map_or(self.round, |(_, r)| (*r).min(self.round));
        self.turns.push_front((client, round));
        self.jobs.entry(client).or_default().push_front(job);
        self.len += 1;
    }

    fn take_where(&mut self, remove: &mut impl FnMut(&J) -> bool, out: &mut Vec<J>) {
        for (client, _) in self.turns.clone() {
            let Some(queue) = self.jobs.get_mut(&client) else { continue };
            let mut kept = VecDeque::with_capacity(queue.len());
            for job in queue.drain(..) {
                if remove(&job) {
                    out.push(job);
                    self.len -= 1;
                } else {
                    kept.push_back(job);
                }
            }
            if kept.is_empty() {
                self.jobs.remove(&client);
                self.turns.retain(|(c, _)| *c != client);
            } else {
                *queue = kept;
            }
        }
    }
}

/// Waiting requests by priority.
#[derive(Debug)]
pub struct JobQueue<J> {
    interactive: Lane<J>,
    background: Lane<J>,
}

impl<J> Default for JobQueue<J> {
    fn default() -> Self {
        Self { interactive: Lane::default(), background: Lane::default() }
    }
}

impl<J: Queued> JobQueue<J> {
    /// Adds a job at the back of its client's line in its lane.
    pub fn push(&mut self, job: J) {
        match job.priority() {
            Priority::Interactive => self.interactive.push(job),
            Priority::Background => self.background.push(job),
        }
    }

    /// The next job of `priority`: the oldest of the client whose turn it is.
    pub fn pop(&mut self, priority: Priority) -> Option<J> {
        self.pop_where(priority, |_| true)
    }

    /// The next job of `priority` from a client that `allowed` lets go: the oldest of the
    /// first such client in line; the others keep their places.
    pub fn pop_where(&mut self, priority: Priority, allowed: impl Fn(u64) -> bool) -> Option<J> {
        match priority {
            Priority::Interactive => self.interactive.pop_where(allowed),
            Priority::Background => self.background.pop_where(allowed),
        }
    }

    /// Gives back a job taken with [`pop`](Self::pop) that cannot start yet: it is the next
    /// of its lane again.
    pub fn unpop(&mut self, job: J) {
        match job.priority() {
            Priority::Interactive => self.interactive.unpop(job),
            Priority::Background => self.background.unpop(job),
        }
    }

    /// The job [`pop`](Self::pop) would return for `priority`, left in place.
    pub fn peek(&self, priority: Priority) -> Option<&J> {
        match priority {
            Priority::Interactive => self.interactive.peek(),
            Priority::Background => self.background.peek(),
        }
    }

    /// Waiting jobs, per lane.
    pub fn counts(&self) -> (usize, usize) {
        (self.interactive.len, self.background.len)
    }

    /// Waiting jobs in all.
    pub fn len(&self) -> usize {
        self.interactive.len + self.background.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns every job for which `remove` says true, keeping the others' order.
    pub fn take_where(&mut self, mut remove: impl FnMut(&J) -> bool) -> Vec<J> {
        let mut out = Vec::new();
        self.interactive.take_where(&mut remove, &mut out);
        self.background.take_where(&mut remove, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (number, priority, client)
    #[derive(Debug, PartialEq)]
    struct J(u32, Priority, u64);

    impl Queued for J {
        fn priority(&self) -> Priority {
            self.1
        }

        fn client(&self) -> u64 {
            self.2
        }
    }

    const I: Priority = Priority::Interactive;
    const B: Priority = Priority::Background;

    #[test]
    fn lanes_are_fifo_per_client_and_separate() {
        let mut q = JobQueue::default();
        q.push(J(1, B, 0));
        q.push(J(2, I, 0));
        q.push(J(3, I, 0));
        assert_eq!(q.counts(), (2, 1));
        assert_eq!(q.pop(I), Some(J(2, I, 0)));
        assert_eq!(q.pop(I), Some(J(3, I, 0)));
        assert_eq!(q.pop(I), None);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn clients_take_turns() {
        let mut q = JobQueue::default();
        for n in 0..4 {
            q.push(J(n, I, 7));
        }
        q.push(J(10, I, 8));
        q.push(J(11, I, 8));
        q.push(J(20, I, 9));
        let order: Vec<u32> = std::iter::from_fn(|| {
            let next = q.peek(I).map(|j| j.0);
            let popped = q.pop(I).map(|j| j.0);
            assert_eq!(next, popped, "peek shows what pop takes");
            popped
        })
        .collect();
        assert_eq!(order, [0, 10, 20, 1, 11, 2, 3], "one client's backlog does not hold up the others");
        assert!(q.peek(B).is_none());
        assert!(q.is_empty());

        // A client that arrives after another had its turn waits for that one's next request
        // at most.
        q.push(J(0, I, 7));
        q.push(J(1, I, 7));
        q.push(J(2, I, 7));
        assert_eq!(q.pop(I), Some(J(0, I, 7)));
        q.push(J(10, I, 8));
        assert_eq!(q.pop(I), Some(J(1, I, 7)));
        assert_eq!(q.pop(I), Some(J(10, I, 8)));
        assert_eq!(q.pop(I), Some(J(2, I, 7)));
    }

    #[test]
    fn clients_sending_one_request_at_a_time_do_not_starve_a_backlog() {
        let mut q = JobQueue::default();
        for n in 0..3 {
            q.push(J(100 + n, I, 9));
        }
        // Clients 1 and 2 send their next request as soon as the last one is served; 10 and 11
        // come back as new clients each time (a new connection per request).
        for c in [1, 2, 10, 11] {
            q.push(J(0, I, c));
        }
        let mut backlog = Vec::new();
        for turn in 0..20 {
            let j = q.pop(I).unwrap();
            match j.2 {
                9 => backlog.push(turn),
                c if c >= 10 => q.push(J(j.0 + 1, I, c + 100)),
                c => q.push(J(j.0 + 1, I, c)),
            }
        }
        assert_eq!(backlog, [0, 5, 10], "one turn per round of five clients");
    }

    #[test]
    fn a_client_held_back_keeps_its_place_and_a_job_given_back_goes_first() {
        let mut q = JobQueue::default();
        q.push(J(0, I, 7));
        q.push(J(1, I, 7));
        q.push(J(10, I, 8));
        assert_eq!(q.pop(I), Some(J(0, I, 7)));
        assert_eq!(q.pop(I), Some(J(10, I, 8)));
        // Client 7's first request is in progress: its second waits, first in line.
        assert_eq!(q.pop_where(I, |c| c != 7), None);
        q.push(J(20, I, 9));
        assert_eq!(q.peek(I), Some(&J(1, I, 7)), "7 keeps its place");
        let taken = q.pop_where(I, |c| c != 7).unwrap();
        assert_eq!(taken, J(20, I, 9), "the others go meanwhile");
        q.unpop(taken);
        assert_eq!(q.counts(), (2, 0));
        assert_eq!(q.peek(I), Some(&J(20, I, 9)), "a job given back is first again");
        assert_eq!(q.pop(I), Some(J(20, I, 9)));
        assert_eq!(q.pop(I), Some(J(1, I, 7)));
        q.push(J(30, I, 3));
        assert_eq!(q.pop(I), Some(J(30, I, 3)));
        assert!(q.is_empty());
    }

    #[test]
    fn take_where_keeps_order_of_the_rest() {
        let mut q = JobQueue::default();
        for i in 0..6 {
            q.push(J(i, if i % 2 == 0 { I } else { B }, 1));
        }
        let taken = q.take_where(|j| j.0 % 3 == 0);
        assert_eq!(taken, vec![J(0, I, 1), J(3, B, 1)]);
        assert_eq!(q.pop(I), Some(J(2, I, 1)));
        assert_eq!(q.pop(B), Some(J(1, B, 1)));
        assert_eq!(q.len(), 2);
        q.push(J(9, I, 2));
        assert_eq!(q.take_where(|j| j.2 == 1).len(), 2);
        assert_eq!(q.pop(I), Some(J(9, I, 2)));
        assert!(q.is_empty());
    }
}
