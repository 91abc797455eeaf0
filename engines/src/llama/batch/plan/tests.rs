//! The plan's rules, case by case and exhaustively over small mixes.

use super::*;

fn decoding(slot: usize) -> Want {
    Want {
        slot,
        decode: true,
        prompt_left: 0,
        prompt_started: false,
        prompt_len: 10,
        age: 0,
    }
}

fn prompt(slot: usize, left: usize, len: usize) -> Want {
    Want {
        slot,
        decode: false,
        prompt_left: left,
        prompt_started: false,
        prompt_len: len,
        age: 0,
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
fn a_long_prompt_is_not_starved_by_a_steady_flow_of_shorter_ones() {
    // Eight streams decode; a long prompt waits; shorter ones keep coming, as
    // many as 16 waiting at once (the slots bound them): too long to finish
    // whole in a step (they compete in prefill steps), or short enough (in
    // finish steps). Fewest-tokens-first alone never serves the long one.
    for short in [30, 5] {
        let budget = 15;
        let mut wants: Vec<Want> = (0..8).map(decoding).collect();
        wants.push(prompt(8, 80, 80));
        let mut turn = Turn::default();
        let mut done_at = None;
        for step in 0..400 {
            let waiting = wants[9..].iter().filter(|w| w.prompt_left > 0).count();
            if waiting < 16 {
                wants.push(prompt(9 + step, short, short));
            }
            let p = plan(&wants, budget, turn);
            apply(&mut wants, &p);
            turn = p.next;
            for w in &mut wants {
                w.age += 1;
            }
            if done_at.is_none() && wants[8].prompt_left == 0 {
                done_at = Some(step);
            }
        }
        // Served once its wait for its size is the longest (step 194 with the
        // 30-token flow, 41 with the 5-token one).
        let done_at = done_at.unwrap_or(usize::MAX);
        assert!(done_at <= 300, "{short}-token flow: done at step {done_at}");
    }
}

#[test]
fn a_small_request_still_goes_first_when_longer_prompts_have_aged() {
    let mut wants: Vec<Want> = (0..4).map(decoding).collect();
    wants.extend((4..54).map(|slot| Want {
        age: AGED_AFTER + 5,
        ..prompt(slot, 23, 23)
    }));
    wants.push(prompt(54, 12, 12));
    let p = plan(&wants, 16, after(Kind::Decode, 0));
    assert_eq!(p.prompts, vec![(54, 12)]);
    // Then the aged prompts' turn, the oldest first, before the streams'.
    wants[10].age += 1;
    let p = plan(&wants, 16, p.next);
    assert_eq!(p.next.last, Kind::Prefill);
    assert_eq!(p.prompts.first(), Some(&(10, 16)));
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
