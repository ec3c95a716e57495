//! A cheap PRNG (xorshift64*) for masking keys and jitter; not for secrets.

/// xorshift64* state; never zero.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from any seed (spread with splitmix64, so nearby seeds
    /// give unrelated streams).
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self(if z == 0 { 1 } else { z })
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A fresh 4-byte masking key.
    #[inline]
    pub fn mask(&mut self) -> [u8; 4] {
        ((self.next_u64() >> 32) as u32).to_ne_bytes()
    }

    /// A value in `0..n` (`n` > 0), slightly biased, fine for jitter.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A seed that differs between runs and processes.
pub fn seed_from_time() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_vary_and_seeds_differ() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(2);
        let ma: Vec<_> = (0..8).map(|_| a.mask()).collect();
        let mb: Vec<_> = (0..8).map(|_| b.mask()).collect();
        assert_ne!(ma, mb);
        assert!(ma.windows(2).any(|w| w[0] != w[1]));
        assert!(Rng::new(0).next_u64() != 0);
    }
}
