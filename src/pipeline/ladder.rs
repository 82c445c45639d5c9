//! The delay ladder (docs/topology.md#delay-ladder): the one rule for where
//! a job goes after a transient failure, and what it becomes past the last
//! step.

use crate::domain::carried::Carried;
use crate::domain::dead_letter::{Failure, FailureClass};

/// The next ladder step for a job whose progress is `progress` (this
/// delivery's attempts already counted): `(queue index, progress carried
/// there)`, or None when the ladder is climbed to the top.
pub fn next(progress: Carried, ladder_len: usize) -> Option<(usize, Carried)> {
    let step = progress.ladder_step as usize;
    (step < ladder_len).then(|| {
        (
            step,
            Carried {
                ladder_step: progress.ladder_step + 1,
                awaiting_callback: false,
                ..progress
            },
        )
    })
}

/// Where a job waits while its vendor cannot be called: the park step,
/// without climbing (a pause spends none of the job's budget).
pub fn park(progress: Carried, park_step: usize) -> (usize, Carried) {
    (
        park_step,
        Carried {
            awaiting_callback: false,
            ..progress
        },
    )
}

/// A transient failure past the last step: `retries_exhausted`, with the
/// last error kept.
pub fn exhausted(last: Failure, ladder_len: usize, attempts: u32) -> Failure {
    Failure {
        class: FailureClass::RetriesExhausted,
        message: format!(
            "transient failures outlasted the retry budget ({ladder_len} delay steps, {attempts} vendor attempts); \
             last error: {}. Replay the job once the cause is fixed",
            last.message
        ),
        retryable: true,
        ..last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn climbs_one_step_at_a_time_then_stops() {
        let p = Carried {
            attempts: 4,
            ladder_step: 1,
            awaiting_callback: true,
            ..Default::default()
        };
        let (step, carried) = next(p.clone(), 3).unwrap();
        assert_eq!(step, 1);
        assert_eq!(carried.ladder_step, 2);
        assert_eq!(carried.attempts, 4);
        assert!(!carried.awaiting_callback);
        assert!(
            next(
                Carried {
                    ladder_step: 3,
                    ..p
                },
                3
            )
            .is_none()
        );
    }

    #[test]
    fn parking_keeps_the_ladder_position() {
        let p = Carried {
            ladder_step: 2,
            attempts: 1,
            ..Default::default()
        };
        let (step, carried) = park(p, 0);
        assert_eq!((step, carried.ladder_step, carried.attempts), (0, 2, 1));
    }
}
