//! Per convolution configuration, the chunk count that was fastest in practice.
//!
//! The chunk plan's cost model cannot know how the engine's speed changes with fewer
//! samples per call (for some layers it halves) or how fast the link really is. A
//! training script calls the same configurations thousands of times, so the first calls
//! of each one try a few counts — the model's, half of it, and one chunk — in turn, each
//! [`SAMPLES`] times, and every later call uses the count whose fastest call was
//! fastest. Only whole successful calls are counted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Calls of each candidate before the choice is made.
pub const SAMPLES: u32 = 3;

/// Configurations remembered; beyond this, calls take the model's count untried.
const MAX_CONFIGS: usize = 4096;

#[derive(Debug)]
struct Entry {
    candidates: Vec<usize>,
    best: Vec<Option<Duration>>,
    calls: Vec<u32>,
    chosen: Option<usize>,
}

/// What a call should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub chunks: usize,
    /// Still trying candidates: the call's time is to be reported.
    pub trying: bool,
}

pub struct Tuner {
    entries: Mutex<HashMap<u64, Entry>>,
}

/// The process's tuner.
pub static TUNER: once_cell::sync::Lazy<Tuner> = once_cell::sync::Lazy::new(Tuner::new);

/// The counts worth trying around the model's `k`: `k`, half of it, one.
pub fn candidates(k: usize) -> Vec<usize> {
    let mut c = vec![k, (k / 2).max(1), 1];
    c.dedup();
    c
}

impl Tuner {
    pub fn new() -> Tuner {
        Tuner {
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The chunk count for this call of configuration `key`, whose model count is `k`.
    pub fn choose(&self, key: u64, k: usize) -> Choice {
        let untried = Choice {
            chunks: k,
            trying: false,
        };
        if k <= 1 {
            return untried;
        }
        let Ok(mut map) = self.entries.lock() else {
            return untried;
        };
        if !map.contains_key(&key) && map.len() >= MAX_CONFIGS {
            return untried;
        }
        let e = map.entry(key).or_insert_with(|| {
            let candidates = candidates(k);
            Entry {
                best: vec![None; candidates.len()],
                calls: vec![0; candidates.len()],
                candidates,
                chosen: None,
            }
        });
        if let Some(c) = e.chosen {
            return Choice {
                chunks: c,
                trying: false,
            };
        }
        // The candidate with the fewest calls so far (in order, so they alternate).
        let i = (0..e.candidates.len())
            .min_by_key(|&i| e.calls[i])
            .expect("at least one candidate");
        Choice {
            chunks: e.candidates[i],
            trying: true,
        }
    }

    /// A successful call of `key` with `chunks` took `took`.
    pub fn report(&self, key: u64, chunks: usize, took: Duration) -> Option<usize> {
        let mut map = self.entries.lock().ok()?;
        let e = map.get_mut(&key)?;
        if e.chosen.is_some() {
            return None;
        }
        let i = e.candidates.iter().position(|&c| c == chunks)?;
        e.calls[i] += 1;
        e.best[i] = Some(e.best[i].map_or(took, |b| b.min(took)));
        if e.calls.iter().all(|&n| n >= SAMPLES) {
            let fastest = (0..e.candidates.len())
                .min_by_key(|&i| e.best[i].expect("every candidate ran"))
                .expect("at least one candidate");
            e.chosen = Some(e.candidates[fastest]);
            return e.chosen;
        }
        None
    }

    /// The best time of each candidate of `key` so far (for the log).
    pub fn trials(&self, key: u64) -> Vec<(usize, Option<Duration>)> {
        self.entries
            .lock()
            .ok()
            .and_then(|m| {
                m.get(&key)
                    .map(|e| e.candidates.iter().copied().zip(e.best.clone()).collect())
            })
            .unwrap_or_default()
    }
}

impl Default for Tuner {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn candidates_are_the_model_half_and_one() {
        assert_eq!(candidates(8), vec![8, 4, 1]);
        assert_eq!(candidates(3), vec![3, 1]);
        assert_eq!(candidates(2), vec![2, 1]);
    }

    #[test]
    fn tries_each_candidate_then_keeps_the_fastest() {
        let t = Tuner::new();
        // The model says 8; one chunk turns out fastest, 4 next, 8 slowest.
        let time = |c: usize| {
            ms(match c {
                8 => 30,
                4 => 20,
                _ => 10,
            })
        };
        let mut tried = Vec::new();
        let mut chosen = None;
        for _ in 0..3 * SAMPLES {
            let c = t.choose(7, 8);
            assert!(c.trying);
            tried.push(c.chunks);
            chosen = t.report(7, c.chunks, time(c.chunks));
        }
        assert_eq!(chosen, Some(1));
        for c in [8, 4, 1] {
            assert_eq!(tried.iter().filter(|&&x| x == c).count(), SAMPLES as usize);
        }
        // From now on: one chunk, not trying.
        assert_eq!(
            t.choose(7, 8),
            Choice {
                chunks: 1,
                trying: false
            }
        );
        assert_eq!(
            t.report(7, 1, ms(1)),
            None,
            "a decided entry keeps its choice"
        );
        // Another configuration is tuned on its own.
        assert!(t.choose(8, 8).trying);
    }

    #[test]
    fn the_fastest_call_counts_not_the_slowest() {
        let t = Tuner::new();
        for round in 0..SAMPLES {
            for _ in 0..2 {
                let c = t.choose(1, 2);
                // Two chunks: one slow outlier, otherwise 5 ms; one chunk: always 6 ms.
                let took = match (c.chunks, round) {
                    (2, 0) => ms(50),
                    (2, _) => ms(5),
                    _ => ms(6),
                };
                t.report(1, c.chunks, took);
            }
        }
        assert_eq!(t.choose(1, 2).chunks, 2);
    }

    #[test]
    fn one_chunk_needs_no_tuning() {
        let t = Tuner::new();
        assert_eq!(
            t.choose(3, 1),
            Choice {
                chunks: 1,
                trying: false
            }
        );
        assert_eq!(t.report(3, 1, ms(1)), None);
    }
}
