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
    let room = if decoders.is_empty() {
        budget
    } else {
        (2 * budget).saturating_sub(turn.prompted).min(budget)
    };
    if turn.prompt_steps < PROMPT_STEPS || decoders.is_empty() {
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
    let decode_turn = turn.last != Kind::Decode || prompts.is_empty();
    if decoders.is_empty() || !decode_turn {
        let mut left = room;
        let mut chunks = Vec::new();
        for w in &prompts {
            if left == 0 {
                break;
            }
            let n = w.prompt_left.min(left);
            chunks.push((w.slot, n));
            left -= n;
        }
        let fed = room - left;
        return Plan {
            prompts: chunks,
            decodes: Vec::new(),
            next: turn.then(Kind::Prefill, turn.cursor, fed),
        };
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
mod tests {
    use super::*;

    fn decoding(slot: usize) -> Want {
        Want {
            slot,
            decode: true,
            prompt_left: 0,
            prompt_started: false,
            prompt_len: 10,
        }
    }

    fn prompt(slot: usize, left: usize, len: usize) -> Want {
        Want {
            slot,
            decode: false,
            prompt_left: left,
            prompt_started: false,
            prompt_len: len,
        }
    }

    fn after(last: Kind, cursor: usize) -> Turn {
        Turn {
            cursor,
            last,
            prompt_steps: usize::from(last != Kind::Decode),
            prompted: 0,
        }
    }

    #[test]
    fn a_short_prompt_gets_the_next_step_ahead_of_streams_and_long_prompts() {
        let mut wants: Vec<Want> = (0..50).map(decoding).collect();
        wants.push(prompt(50, 23, 23));
        wants.push(prompt(51, 1_000, 1_000));
        wants.push(prompt(52, 1, 12));
        for last in [Kind::Decode, Kind::Prefill] {
            let p = plan(&wants, 8, after(last, 7));
            assert_eq!(p.prompts, vec![(52, 1)]);
            assert!(p.decodes.is_empty());
            assert_eq!((p.next.last, p.next.cursor), (Kind::Finish, 7));
        }
        // One that arrives during a finish step gets the next one too...
        let p = plan(&wants, 8, after(Kind::Finish, 7));
        assert_eq!(p.prompts, vec![(52, 1)]);
        let p = plan(&wants, 8, p.next);
        assert_eq!(p.prompts, vec![(52, 1)]);
        // ... but after three prompt steps, the streams, from where they stopped.
        assert_eq!(p.next.prompt_steps, PROMPT_STEPS);
        let p = plan(&wants, 8, p.next);
        assert!(p.prompts.is_empty());
        assert_eq!(p.decodes, (7..15).collect::<Vec<_>>());
        assert_eq!(p.next, Turn::default().then(Kind::Decode, 15, 0));
    }

    #[test]
    fn a_second_finish_step_takes_only_what_the_first_left_of_two_budgets() {
        let mut wants: Vec<Want> = (0..4).map(decoding).collect();
        wants.extend((4..20).map(|slot| prompt(slot, 1, 23)));
        let p = plan(&wants, 6, after(Kind::Decode, 0));
        assert_eq!(p.prompts.len(), 6);
        let mut after_prefill = Turn::default().then(Kind::Prefill, 0, 6);
        after_prefill = plan(&wants, 6, after_prefill).next;
        assert_eq!(after_prefill.prompted, 12);
        let p = plan(&wants, 6, after_prefill);
        assert_eq!(p.decodes.len(), 4, "two budgets fed: the streams' turn");
    }

    #[test]
    fn prompts_that_finish_share_their_step_up_to_the_budget_unless_much_longer() {
        let mut wants: Vec<Want> = (0..3).map(decoding).collect();
        wants.extend((3..8).map(|slot| prompt(slot, 3, 23)));
        let p = plan(&wants, 10, Turn::default());
        assert_eq!(p.prompts, vec![(3, 3), (4, 3), (5, 3)]);
        // Twelve tokens would make the one-token prompt's step ten times longer: later.
        wants.truncate(3);
        wants.push(prompt(3, 12, 12));
        wants.push(prompt(4, 2, 12));
        wants.push(prompt(5, 1, 12));
        assert_eq!(
            plan(&wants, 16, Turn::default()).prompts,
            vec![(5, 1), (4, 2)]
        );
    }

    #[test]
    fn the_last_chunk_of_a_long_prompt_is_no_small_request() {
        let mut wants: Vec<Want> = (0..4).map(decoding).collect();
        let mut tail = prompt(4, 5, 40);
        tail.prompt_started = true;
        wants.push(tail);
        // It is prefilled in turn with the streams, and leaves the next finish step free.
        let p = plan(&wants, 8, Turn::default());
        assert_eq!(p.next.last, Kind::Prefill);
        wants.push(prompt(5, 1, 12));
        let p = plan(&wants, 8, p.next);
        assert_eq!(p.prompts, vec![(5, 1)]);
    }

    #[test]
    fn with_as_much_left_the_shorter_prompt_goes_first() {
        let wants = [prompt(0, 1, 23), prompt(1, 1, 12), prompt(2, 1, 23)];
        assert_eq!(
            plan(&wants, 2, Turn::default()).prompts,
            vec![(1, 1), (0, 1)]
        );
    }

    #[test]
    fn every_stream_moves_once_per_round_even_when_a_round_spans_steps() {
        let wants: Vec<Want> = (0..10).map(decoding).collect();
        let mut turn = Turn::default();
        let mut times = [0; 10];
        for _ in 0..7 {
            let p = plan(&wants, 4, turn);
            assert!(p.prompts.is_empty());
            assert_eq!(p.decodes.len(), 4);
            assert!(p.decodes.windows(2).all(|w| w[0] < w[1]), "{:?}", p.decodes);
            turn = p.next;
            for slot in p.decodes {
                times[slot] += 1;
            }
            // No stream gets a second token before every other got its first.
            let (min, max) = (times.iter().min(), times.iter().max());
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{times:?}");
        }
    }

    #[test]
    fn long_prompts_and_streams_take_turns_and_either_alone_takes_every_step() {
        let mut wants: Vec<Want> = (0..6).map(decoding).collect();
        wants.push(prompt(6, 500, 500));
        wants.push(prompt(7, 30, 30));
        let p = plan(&wants, 8, Turn::default());
        assert_eq!(
            p.prompts,
            vec![(7, 8)],
            "the one with fewer tokens left first"
        );
        let p = plan(&wants, 8, p.next);
        assert_eq!((p.prompts.len(), p.decodes.len()), (0, 6));
        let p = plan(&wants, 8, p.next);
        assert_eq!(p.prompts, vec![(7, 8)]);
        assert_eq!(
            plan(&wants[..6], 8, after(Kind::Decode, 0)).decodes.len(),
            6
        );
        assert_eq!(
            plan(&wants[6..], 8, after(Kind::Prefill, 0)).prompts,
            vec![(7, 8)]
        );
    }

    /// Feeds a plan into the wants, as the batch loop does (a fed prompt's
    /// last token and a decoded token each bring a new token to decode).
    fn apply(wants: &mut [Want], p: &Plan) {
        for w in wants.iter_mut() {
            if let Some(&(_, n)) = p.prompts.iter().find(|&&(slot, _)| slot == w.slot) {
                w.prompt_left -= n;
                w.prompt_started = true;
                w.decode = w.prompt_left == 0;
            }
        }
    }

    #[test]
    fn small_requests_arriving_every_step_never_hold_the_streams_longer() {
        for budget in 2..24 {
            let mut wants: Vec<Want> = (0..6).map(decoding).collect();
            let (mut turn, mut waited, mut prompted) = (Turn::default(), 0, 0);
            for step in 0..200 {
                if step < 60 {
                    wants.push(prompt(6 + step, 1 + step % 4, 12));
                }
                let p = plan(&wants, budget, turn);
                let fed: usize = p.prompts.iter().map(|&(_, n)| n).sum();
                if p.decodes.is_empty() {
                    (waited, prompted) = (waited + 1, prompted + fed);
                } else {
                    (waited, prompted) = (0, 0);
                }
                let case = format!("budget {budget}, step {step}: {p:?}");
                assert!(waited <= PROMPT_STEPS && prompted <= 2 * budget, "{case}");
                apply(&mut wants, &p);
                turn = p.next;
            }
            assert!(wants.iter().all(|w| w.prompt_left == 0), "budget {budget}");
        }
    }

    #[test]
    fn within_budget_never_idle_and_streams_wait_for_at_most_two_budgets_of_prompt() {
        // Every mix of streams and prompt lengths up to small sizes, run until the prompts are in.
        for streams in 0..12 {
            for left in [0, 1, 3, 7, 40] {
                for budget in 2..20 {
                    let mut wants: Vec<Want> = (0..streams).map(decoding).collect();
                    wants.push(prompt(streams, left, left + 5));
                    wants.push(prompt(streams + 1, left * 2, left * 2));
                    let mut turn = Turn::default();
                    let (mut waited, mut prompted) = (0, 0);
                    for _ in 0..400 {
                        let p = plan(&wants, budget, turn);
                        let fed: usize =
                            p.prompts.iter().map(|&(_, n)| n).sum::<usize>() + p.decodes.len();
                        let case = format!("{streams} {left} {budget}: {p:?}");
                        assert!(fed <= budget, "{case}");
                        let work = wants.iter().any(|w| w.decode || w.prompt_left > 0);
                        assert_eq!(fed > 0, work, "an idle step: {case}");
                        if p.decodes.is_empty() {
                            waited += 1;
                            prompted += fed;
                        } else {
                            (waited, prompted) = (0, 0);
                        }
                        let streams_wait = wants.iter().any(|w| w.decode);
                        assert!(
                            !streams_wait || (waited <= PROMPT_STEPS && prompted <= 2 * budget),
                            "{case}"
                        );
                        apply(&mut wants, &p);
                        turn = p.next;
                    }
                    assert!(wants.iter().all(|w| w.prompt_left == 0));
                }
            }
        }
    }
}
