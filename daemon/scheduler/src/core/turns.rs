//! Turns on the engine between the interactive requests in progress. A turn is one prefill
//! chunk of a prompt that has more to come, or up to `turn_tokens` generated tokens (a turn that
//! finishes a prompt goes on to its tokens, so a short request's first token comes in the same
//! turn as its prompt). When a turn ends, a waiting request of another client starts next (the
//! core decides that); otherwise the next request in progress, in the order they started, has
//! its turn, round and round. Pure bookkeeping over sequence numbers, unit-tested here.

/// What one step of a request did, as turns count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Did {
    /// A chunk of its prompt, with more to come.
    Chunk,
    /// The last chunk of its prompt.
    LastChunk,
    /// A token.
    Token,
    /// It ended (finished, failed or was stopped).
    Ended,
}

/// Whose turn it is.
#[derive(Debug, Default)]
pub struct Turns {
    /// The request whose turn goes on, and the tokens left in it.
    holder: Option<(u64, usize)>,
    /// The request that had the last turn: the round goes on after it.
    last: Option<u64>,
}

impl Turns {
    /// Gives the turn to `seq`, for at most `tokens` generated tokens.
    pub fn give(&mut self, seq: u64, tokens: usize) {
        self.holder = Some((seq, tokens.max(1)));
        self.last = Some(seq);
    }

    /// The request whose turn goes on, if any.
    pub fn holder(&self) -> Option<u64> {
        self.holder.map(|(seq, _)| seq)
    }

    /// Counts what a step of `seq` did: the turn ends after a chunk with more of the prompt to
    /// come, after its last token, and when the request ended.
    pub fn stepped(&mut self, seq: u64, did: Did) {
        let Some((holder, left)) = self.holder.as_mut() else { return };
        if *holder != seq {
            return;
        }
        match did {
            Did::LastChunk => {}
            Did::Token if *left > 1 => *left -= 1,
            Did::Chunk | Did::Token | Did::Ended => self.holder = None,
        }
    }

    /// Who has the next turn among the requests in progress, `seqs` in the order they started
    /// (ascending): the first after the last turn's, else the first.
    pub fn next(&self, seqs: impl Iterator<Item = u64> + Clone) -> Option<u64> {
        let after = self.last.and_then(|last| seqs.clone().find(|&s| s > last));
        after.or_else(|| seqs.clone().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs turns over requests `seqs` (each a list of what its steps do) and returns the order
    /// of the steps by request.
    fn play(mut seqs: Vec<(u64, Vec<Did>)>, tokens: usize) -> Vec<u64> {
        let mut turns = Turns::default();
        let mut order = Vec::new();
        while !seqs.is_empty() {
            let seq = match turns.holder() {
                Some(s) => s,
                None => {
                    let next = turns.next(seqs.iter().map(|(s, _)| *s)).unwrap();
                    turns.give(next, tokens);
                    next
                }
            };
            let i = seqs.iter().position(|(s, _)| *s == seq).unwrap();
            let did = seqs[i].1.remove(0);
            order.push(seq);
            turns.stepped(seq, did);
            if did == Did::Ended {
                seqs.remove(i);
            }
        }
        order
    }

    use Did::{Chunk, Ended, LastChunk, Token};

    #[test]
    fn a_prompt_takes_one_chunk_per_turn_and_a_generation_some_tokens() {
        let long = vec![Chunk, Chunk, Chunk, LastChunk, Token, Ended];
        let short = vec![LastChunk, Token, Token, Token, Ended];
        let order = play(vec![(1, long), (2, short)], 2);
        // 1's chunk, then 2's prompt and its first two tokens in one turn, 1's next chunk…
        assert_eq!(order, [1, 2, 2, 2, 1, 2, 2, 1, 1, 1, 1]);
    }

    #[test]
    fn requests_in_progress_go_round_in_the_order_they_started() {
        let gen = || vec![LastChunk, Token, Token, Token, Token, Ended];
        let order = play(vec![(1, gen()), (2, gen()), (3, gen())], 2);
        assert_eq!(order[..9], [1, 1, 1, 2, 2, 2, 3, 3, 3], "a turn is the prompt and two tokens");
        assert_eq!(order[9..], [1, 1, 2, 2, 3, 3, 1, 2, 3]);
    }

    #[test]
    fn a_step_of_another_request_leaves_the_turn_alone() {
        let mut turns = Turns::default();
        turns.give(5, 3);
        turns.stepped(4, Ended);
        assert_eq!(turns.holder(), Some(5));
        turns.stepped(5, Token);
        turns.stepped(5, Token);
        assert_eq!(turns.holder(), Some(5));
        turns.stepped(5, Token);
        assert_eq!(turns.holder(), None);
        assert_eq!(turns.next([4, 5, 6].into_iter()), Some(6));
        assert_eq!(turns.next([4, 5].into_iter()), Some(4), "round and round");
        assert_eq!(turns.next(std::iter::empty()), None);
    }
}
