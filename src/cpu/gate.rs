//! Gates between the engine and copies still in flight: a pass over a whole batch
//! whose input arrives image by image and whose output leaves image by image. The
//! engine asks the gate before a task reads an image and tells it when every task
//! writing an image has finished; the copies are the caller's business.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a gated pass waits for and reports.
pub trait Gate: Sync {
    /// Blocks until the input of image `image` (and every earlier one, and the
    /// weights) is on the host; false when it never will be (a failed copy): the
    /// task is then skipped, and the pass's output is not to be used.
    fn input_ready(&self, image: usize) -> bool;
    /// Every task that writes image `image` of the output has finished.
    fn output_done(&self, image: usize);
}

/// Counts the tasks still writing each image, for [`Gate::output_done`].
pub(crate) struct Pending(Vec<AtomicUsize>);

impl Pending {
    /// `images` of the batch, written by tasks whose images are `writes`.
    pub(crate) fn new<'a>(images: usize, writes: impl Iterator<Item = &'a Range<usize>>) -> Self {
        let counts: Vec<AtomicUsize> = (0..images).map(|_| AtomicUsize::new(0)).collect();
        for r in writes {
            for i in r.clone() {
                counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        Pending(counts)
    }

    /// A task that wrote `images` has finished: reports each image it was the last
    /// writer of.
    pub(crate) fn finished(&self, images: Range<usize>, gate: &dyn Gate) {
        for i in images {
            if self.0[i].fetch_sub(1, Ordering::AcqRel) == 1 {
                gate.output_done(i);
            }
        }
    }
}
