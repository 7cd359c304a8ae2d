//! Data, images and deltas made by the tests.

use lvmsync::cowgen::Rng;

/// `len` pseudo-random bytes from `seed` (not 0): the same for the same
/// seed, and a prefix of what a longer length gives.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng(seed).fill(&mut v);
    v
}
