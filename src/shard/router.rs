//! Which shard owns a channel: a pure function of the channel name.

/// Fixed seeds so that every shard computes the same owner for a name.
/// Any constants work; these are the first digits of pi.
const SEEDS: [u64; 4] = [
    0x243F_6A88_85A3_08D3,
    0x1319_8A2E_0370_7344,
    0xA409_3822_299F_31D0,
    0x082E_FA98_EC4E_6C89,
];

/// The shard that owns `channel` among `shards` shards.
pub fn owner(channel: &str, shards: usize) -> u16 {
    let h =
        ahash::RandomState::with_seeds(SEEDS[0], SEEDS[1], SEEDS[2], SEEDS[3]).hash_one(channel);
    (h % shards.max(1) as u64) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(owner("example", 4), owner("example", 4));
        assert_eq!(owner("anything", 1), 0);
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[owner(&format!("ch{i}"), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }
}
