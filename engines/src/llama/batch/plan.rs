//! What one decode step feeds: a pure choice among what each sequence wants.
//!
//! Nothing joins a step once it has started, so a request that arrives waits
//! for the step in progress, then for its own. Steps are therefore kept short
//! (`pace.rs` sets their token budget), and each is one of three kinds:
//!
//! - **finish**: new prompts small enough to be decoded whole within the
//!   step, fewest tokens first (others join only if at most twice as long as
//!   the first): a small request's first token waits for its own few tokens,
//!   not for a step of other work, however many streams are decoding or long
//!   prompts waiting. Several may come in a row (a request that arrives
//!   during one is not sent behind a round of decoding), within the bounds
//!   below.
//! - **decode**: one token for each decoding sequence in turn, from where the
//!   last such step stopped, so every stream moves once per round even when a
//!   round spans several steps.
//! - **prefill**: chunks of longer prompts, fewest tokens left first.
//!
//! Prefill steps take the prompt that has waited longest for its size first
//! (see [`prefilling`]), and once any prompt has waited [`AGED_AFTER`] steps,
//! every other prompt step is a prefill step, so a flow of small requests in
//! finish steps cannot hold it back either.
//!
//! Decode and prefill steps take turns while both have work, and while
//! sequences wait to decode, the prompt steps between two decode steps are
//! at most [`PROMPT_STEPS`] and feed at most two steps' budget of tokens in
//! all (a prefill and a finish, two finishes, or a few smaller ones: on a CPU
//! a step's cost is nearly its tokens', on a GPU nearly one step's whatever
//! its size, so both are bounded). Kinds are not mixed
//! within a step because llama.cpp splits a step into micro-batches of consecutive sequences with
//! as many tokens each (with a KV cache per sequence), and each micro-batch
//! reads all the weights: a step of decoding sequences in slot order is one.

use super::pace::MIN_TOKENS;

/// Prompt steps between two decode steps, at most, while sequences wait to decode.
pub const PROMPT_STEPS: usize = 3;
/// Steps after which a waiting prompt is owed every other prompt step (~1 s
/// at the pace's 80 ms steps); also a new prompt's head start in [`prefilling`].
pub const AGED_AFTER: u64 = 12;

/// What one active sequence wants from the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub slot: usize,
    /// A sampled token waits to be decoded.
    pub decode: bool,
    /// Prompt tokens not fed yet (0 for a choice that will copy another's prompt).
    pub prompt_left: usize,
    /// Some of them were fed already (the prompt is a long one, in chunks).
    pub prompt_started: bool,
    /// The whole prompt's length: among prompts with as much left, the shorter goes first.
    pub prompt_len: usize,
    /// Steps since the request arrived.
    pub age: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    Finish,
    #[default]
    Decode,
    Prefill,
}

/// What the last step leaves to the next one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turn {
    /// The slot the next round of decoding sequences starts from.
    pub cursor: usize,
    /// The last step's kind.
    pub last: Kind,
    /// Prompt steps (finish or prefill) since the last decode step.
    pub prompt_steps: usize,
    /// Prompt tokens fed since the last decode step.
    pub prompted: usize,
}

impl Turn {
    fn then(self, last: Kind, cursor: usize, prompted: usize) -> Self {
        Self {
            cursor,
            last,
            prompt_steps: if last == Kind::Decode {
                0
            } else {
                self.prompt_steps + 1
            },
            prompted: if last == Kind::Decode {
                0
            } else {
                self.prompted + prompted
            },
        }
    }
}

/// One step's feed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (slot, prompt tokens to feed), in feeding order.
    pub prompts: Vec<(usize, usize)>,
    /// Slots whose sampled token is decoded, in slot order.
    pub decodes: Vec<usize>,
    pub next: Turn,
}

/// Fills a step of at most `budget` tokens (see the module docs).
pub fn plan(wants: &[Want], budget: usize, turn: Turn) -> Plan {
    let budget = budget.max(MIN_TOKENS);
    let mut prompts: Vec<&Want> = wants.iter().filter(|w| w.prompt_left > 0).collect();
    prompts.sort_by_key(|w| (w.prompt_left, w.prompt_len, w.slot));
    let mut decoders: Vec<usize> = wants.iter().filter(|w| w.decode).map(|w| w.slot).collect();
    decoders.sort_by_key(|&slot| (slot < turn.cursor, slot));

    // While sequences wait to decode, what prompts may still take before they do.
    let (room, may_prompt) = if decoders.is_empty() {
        (budget, true)
    } else {
        let room = (2 * budget).saturating_sub(turn.prompted).min(budget);
        (room, room > 0 && turn.prompt_steps < PROMPT_STEPS)
    };
    // A prompt that has waited long is owed every other prompt step.
    let owed = turn.last != Kind::Prefill && prompts.iter().any(|w| w.age >= AGED_AFTER);
    if may_prompt {
        if !(owed && turn.last == Kind::Finish) {
            let finish = finishing(&prompts, room);
            if !finish.is_empty() {
                let fed = finish.iter().map(|&(_, n)| n).sum();
                return Plan {
                    prompts: finish,
                    decodes: Vec::new(),
                    next: turn.then(Kind::Finish, turn.cursor, fed),
                };
            }
        }
        let prefill_turn = turn.last == Kind::Decode && !prompts.is_empty();
        if decoders.is_empty() || prefill_turn || owed {
            let chunks = prefilling(prompts, room);
            let fed = chunks.iter().map(|&(_, n)| n).sum();
            return Plan {
                prompts: chunks,
                decodes: Vec::new(),
                next: turn.then(Kind::Prefill, turn.cursor, fed),
            };
        }
    }
    decoders.truncate(budget);
    let cursor = decoders.last().map_or(turn.cursor, |&last| last + 1);
    decoders.sort_unstable();
    Plan {
        prompts: Vec::new(),
        decodes: decoders,
        next: turn.then(Kind::Decode, cursor, 0),
    }
}

/// Chunks of prompts within `room`, the highest response ratio first: the
/// one whose wait is longest for its size, `(age + AGED_AFTER) / tokens left`
/// (a new prompt counts as having waited [`AGED_AFTER`] steps already). Among
/// prompts of about the same age the shortest goes first, so a small request
/// does not wait for a burst of longer ones; but every waiting prompt's ratio
/// grows, so a long one is never starved by a steady flow of shorter ones.
fn prefilling(mut prompts: Vec<&Want>, room: usize) -> Vec<(usize, usize)> {
    prompts.sort_by(|a, b| {
        let ratio =
            |w: &Want, other: &Want| u128::from(w.age + AGED_AFTER) * other.prompt_left as u128;
        ratio(b, a).cmp(&ratio(a, b)).then_with(|| {
            (a.prompt_left, a.prompt_len, a.slot).cmp(&(b.prompt_left, b.prompt_len, b.slot))
        })
    });
    let mut left = room;
    let mut chunks = Vec::new();
    for w in prompts {
        if left == 0 {
            break;
        }
        let n = w.prompt_left.min(left);
        chunks.push((w.slot, n));
        left -= n;
    }
    chunks
}

/// The prompts (sorted, fewest tokens left first) a finish step takes whole.
fn finishing(prompts: &[&Want], budget: usize) -> Vec<(usize, usize)> {
    let mut new = prompts.iter().filter(|w| !w.prompt_started);
    let mut left = budget;
    let mut finish = Vec::new();
    let Some(first) = new.next() else {
        return finish;
    };
    let shortest = first.prompt_left;
    for w in std::iter::once(first).chain(new) {
        if w.prompt_left > left || w.prompt_left > 2 * shortest {
            break;
        }
        finish.push((w.slot, w.prompt_left));
        left -= w.prompt_left;
    }
    finish
}

#[cfg(test)]
mod tests;
