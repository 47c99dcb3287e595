//! Minimising a frame the classifier and the reference disagree on: the shortest prefix, then
//! as many bytes zeroed as possible, then the plainest way to send it, for as long as the same
//! disagreement persists. What is left is what a regression test needs and no more.

use shaper::Direction;

use super::{Disagreement, Memory, expected, frames::Case, kernel::Kernel, reference, signature};

/// The smallest case found that disagrees with the reference the way `found` does.
pub fn minimise(kernel: &mut Kernel, memory: &mut Memory, found: &Disagreement) -> Disagreement {
    let wanted = found.signature();
    let mut best = found.clone();
    let mut attempt = |case: &Case| -> Option<Disagreement> {
        if reference::refused(&case.frame) {
            return None;
        }
        let expected = expected(case, memory);
        let (verdict, observed) = kernel.observe(case)?;
        memory.learn(case);
        let candidate = Disagreement {
            index: found.index,
            case: case.clone(),
            expected,
            observed,
            verdict,
        };
        (candidate.disagrees() && signature(&candidate) == wanted).then_some(candidate)
    };
    loop {
        let before = best.case.clone();
        let plain_skb = Case {
            gso_segs: None,
            ..best.case.clone()
        };
        if plain_skb != best.case
            && let Some(found) = attempt(&plain_skb)
        {
            best = found;
        }
        let ingress = Case {
            direction: Direction::Ingress,
            ..best.case.clone()
        };
        if ingress != best.case
            && let Some(found) = attempt(&ingress)
        {
            best = found;
        }
        for len in 0..best.case.frame.len() {
            let shorter = Case {
                frame: best.case.frame[..len].to_vec(),
                ..best.case.clone()
            };
            if let Some(found) = attempt(&shorter) {
                best = found;
                break;
            }
        }
        for at in 0..best.case.frame.len() {
            if best.case.frame[at] == 0 {
                continue;
            }
            let mut zeroed = best.case.clone();
            zeroed.frame[at] = 0;
            if let Some(found) = attempt(&zeroed) {
                best = found;
            }
        }
        if best.case == before {
            return best;
        }
    }
}
