//! Numbered slots in fixed-size chunks, with a free list: what the
//! readiness loop and the task store keep per session. It grows by a chunk
//! at a time, never by doubling (a `Vec` that doubled to hold 10,000
//! sessions would carry 6,384 unused slots), and slots never move.

/// Slots per chunk.
pub const CHUNK: usize = 256;

/// Slots of `T`, each either in use or on the free list.
pub struct Slab<T> {
    chunks: Vec<Box<[T]>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    pub const fn new() -> Slab<T> {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }

    /// A free slot's number, now in use (a new chunk of `vacant()` slots
    /// when none is free; lower numbers are handed out first).
    pub fn take(&mut self, vacant: impl Fn() -> T) -> u32 {
        if let Some(id) = self.free.pop() {
            return id;
        }
        let first = u32::try_from(self.chunks.len() * CHUNK).expect("fewer than 2^32 slots");
        self.chunks.push((0..CHUNK).map(|_| vacant()).collect());
        self.free.extend((first + 1..first + CHUNK as u32).rev());
        first
    }

    /// Puts slot `id` back on the free list (the caller has emptied it).
    pub fn give_back(&mut self, id: u32) {
        self.free.push(id);
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        let (c, i) = (id as usize / CHUNK, id as usize % CHUNK);
        self.chunks.get_mut(c).map(|chunk| &mut chunk[i])
    }

    /// Slots in chunks so far, in use or free.
    pub fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        self.capacity() - self.free.len()
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_numbered_from_zero_reused_and_grown_a_chunk_at_a_time() {
        let mut s: Slab<u8> = Slab::new();
        let ids: Vec<u32> = (0..CHUNK + 1).map(|_| s.take(|| 0)).collect();
        assert_eq!(ids, (0..=CHUNK as u32).collect::<Vec<_>>());
        assert_eq!((s.capacity(), s.in_use()), (2 * CHUNK, CHUNK + 1));
        *s.get_mut(7).unwrap() = 9;
        s.give_back(7);
        assert_eq!(s.take(|| 0), 7, "a freed slot is taken first");
        assert_eq!(*s.get_mut(7).unwrap(), 9, "slots keep what they hold");
        assert!(s.get_mut(2 * CHUNK as u32).is_none());
    }
}
