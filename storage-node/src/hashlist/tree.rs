//! A binary hash tree over chunk hashes.
//!
//! Level 0 holds the leaves (`BLAKE3(chunk bytes)`, the chunk zero-padded to
//! the chunk size); level k+1 holds `BLAKE3(0x01 ‖ left ‖ right)` over pairs
//! of level k (a lone last node is carried up as `BLAKE3(0x01 ‖ left)`). The
//! domain byte keeps an inner node from ever equalling a leaf. Parents are
//! updated on every leaf change: log2(n) small hashes.

pub type ChunkHash = [u8; 32];

/// The leaf hash of one chunk's bytes.
pub fn chunk_hash(data: &[u8]) -> ChunkHash {
    *blake3::hash(data).as_bytes()
}

fn parent_hash(left: &ChunkHash, right: Option<&ChunkHash>) -> ChunkHash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[1]);
    hasher.update(left);
    if let Some(right) = right {
        hasher.update(right);
    }
    *hasher.finalize().as_bytes()
}

/// The hash tree of one volume copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashTree {
    /// `levels[0]` are the leaves; the last level has one node, the root.
    levels: Vec<Vec<ChunkHash>>,
}

impl HashTree {
    /// A tree over `leaves` (at least one).
    pub fn from_leaves(leaves: Vec<ChunkHash>) -> Self {
        assert!(!leaves.is_empty(), "a hash tree has at least one leaf");
        let mut levels = vec![leaves];
        while levels.last().unwrap().len() > 1 {
            let below = levels.last().unwrap();
            let above = below
                .chunks(2)
                .map(|pair| parent_hash(&pair[0], pair.get(1)))
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    pub fn n_chunks(&self) -> u64 {
        self.levels[0].len() as u64
    }

    pub fn leaves(&self) -> &[ChunkHash] {
        &self.levels[0]
    }

    pub fn root(&self) -> ChunkHash {
        self.levels.last().unwrap()[0]
    }

    /// Number of levels; the root is at `depth() - 1`.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// The node at `level` and `index`, or `None` past the end.
    pub fn node(&self, level: usize, index: u64) -> Option<ChunkHash> {
        self.levels.get(level)?.get(index as usize).copied()
    }

    /// Sets one leaf and recomputes its path to the root.
    pub fn set_leaf(&mut self, chunk_idx: u64, hash: ChunkHash) {
        let mut index = chunk_idx as usize;
        self.levels[0][index] = hash;
        for level in 1..self.levels.len() {
            let pair_start = index & !1;
            let below = &self.levels[level - 1];
            let parent = parent_hash(&below[pair_start], below.get(pair_start + 1));
            index /= 2;
            self.levels[level][index] = parent;
        }
    }

    /// Grows to `n_chunks` leaves; new leaves get `fill` (the hash of a zero chunk).
    pub fn grow(&mut self, n_chunks: u64, fill: ChunkHash) {
        let mut leaves = std::mem::take(&mut self.levels[0]);
        leaves.resize(n_chunks as usize, fill);
        *self = Self::from_leaves(leaves);
    }

    /// Finds the chunks where this tree and a remote one differ, walking down
    /// from the root and asking the remote only for the children of nodes
    /// that differ. `fetch(level, indices)` returns the remote's hashes of
    /// those nodes (one round trip per level); both trees must have the same
    /// number of leaves. Returns the differing chunk indices and how many
    /// remote hashes were fetched.
    pub fn diff_with<E>(
        &self,
        mut fetch: impl FnMut(usize, &[u64]) -> Result<Vec<ChunkHash>, E>,
    ) -> Result<(Vec<u64>, u64), E> {
        let mut walk = DiffWalk::new(self);
        while let Some((level, indices)) = walk.next_request() {
            let remote = fetch(level, &indices)?;
            walk.feed(&remote);
        }
        Ok(walk.finish())
    }
}

/// The walk of [`HashTree::diff_with`] as a state machine, for callers whose
/// fetch is asynchronous (Delta Sync over the network): ask
/// [`DiffWalk::next_request`], answer with [`DiffWalk::feed`].
pub struct DiffWalk<'a> {
    tree: &'a HashTree,
    level: usize,
    candidates: Vec<u64>,
    fetched: u64,
    differing: Option<Vec<u64>>,
}

impl<'a> DiffWalk<'a> {
    pub fn new(tree: &'a HashTree) -> Self {
        Self {
            tree,
            level: tree.depth() - 1,
            candidates: vec![0],
            fetched: 0,
            differing: None,
        }
    }

    /// The level and node indices whose remote hashes are needed next, or
    /// `None` when the walk is done.
    pub fn next_request(&self) -> Option<(usize, Vec<u64>)> {
        if self.differing.is_some() || self.candidates.is_empty() {
            return None;
        }
        Some((self.level, self.candidates.clone()))
    }

    /// The remote's hashes for the last request, in its order. A short
    /// answer counts the missing nodes as differing.
    pub fn feed(&mut self, remote: &[ChunkHash]) {
        self.fetched += remote.len() as u64;
        let level = self.level;
        let differing: Vec<u64> = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(i, index)| self.tree.node(level, **index).as_ref() != remote.get(*i))
            .map(|(_, index)| *index)
            .collect();
        if level == 0 {
            self.differing = Some(differing);
            return;
        }
        let below = self.tree.levels[level - 1].len() as u64;
        self.candidates = differing
            .iter()
            .flat_map(|index| [index * 2, index * 2 + 1])
            .filter(|child| *child < below)
            .collect();
        self.level -= 1;
    }

    /// The differing chunks and how many remote hashes were fetched.
    pub fn finish(self) -> (Vec<u64>, u64) {
        (self.differing.unwrap_or_default(), self.fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64, salt: u8) -> Vec<ChunkHash> {
        (0..n)
            .map(|i| chunk_hash(&[i.to_le_bytes().as_slice(), &[salt]].concat()))
            .collect()
    }

    #[test]
    fn set_leaf_matches_a_rebuild() {
        for n in [1u64, 2, 3, 7, 64, 1000] {
            let mut tree = HashTree::from_leaves(leaves(n, 0));
            let changed = chunk_hash(b"changed");
            tree.set_leaf(n / 2, changed);
            let mut expected = leaves(n, 0);
            expected[(n / 2) as usize] = changed;
            assert_eq!(tree, HashTree::from_leaves(expected), "n = {n}");
        }
    }

    #[test]
    fn diff_finds_exactly_the_changed_chunks_with_few_hashes() {
        let n_chunks = 1u64 << 16;
        let local = HashTree::from_leaves(leaves(n_chunks, 0));
        let mut remote = local.clone();
        let changed: Vec<u64> = vec![3, 4, 999, 40_000, 65_535];
        for chunk in &changed {
            remote.set_leaf(*chunk, chunk_hash(b"other"));
        }
        let (found, fetched) = local
            .diff_with(|level, indices| {
                Ok::<_, ()>(
                    indices
                        .iter()
                        .map(|index| remote.node(level, *index).unwrap())
                        .collect(),
                )
            })
            .unwrap();
        assert_eq!(found, changed);
        // At most two children per differing node per level: O(changed × log n).
        let bound = 1 + 2 * changed.len() as u64 * local.depth() as u64;
        assert!(fetched <= bound, "fetched {fetched} hashes, bound {bound}");
        assert!(fetched < n_chunks / 100);

        let (none, fetched) = local
            .diff_with(|level, indices| {
                Ok::<_, ()>(
                    indices
                        .iter()
                        .map(|index| local.node(level, *index).unwrap())
                        .collect(),
                )
            })
            .unwrap();
        assert!(none.is_empty());
        assert_eq!(fetched, 1, "equal trees cost one hash");
    }

    #[test]
    fn grow_fills_with_the_given_hash() {
        let zero = chunk_hash(&[0u8; 16]);
        let mut tree = HashTree::from_leaves(vec![zero; 3]);
        tree.grow(5, zero);
        assert_eq!(tree, HashTree::from_leaves(vec![zero; 5]));
    }
}
