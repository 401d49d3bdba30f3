//! Block verification against a segment's BLAKE3, through the BLAKE3 tree.
//!
//! A block of a power-of-two size (at least one 1 KiB chunk), aligned to its
//! size, is a whole subtree of the BLAKE3 tree. Its chaining value (CV) can be
//! computed alone, and the CVs of all blocks merge, in BLAKE3's left-balanced
//! order, into the root: the segment's BLAKE3. So a receiver that checked the
//! CV list against the root can check every block on arrival.
//!
//! Unverified is a type: a [`FetchHeader`](crate::Message::FetchHeader)'s CV
//! list becomes a [`VerifiedTree`] only through [`VerifiedTree::new`], and a
//! block's bytes become a [`VerifiedBlock`] only through
//! [`VerifiedTree::verify_block`].

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::message::{block_count, valid_block_size};

/// The CV of block `index` of `block_size` (its bytes in `data`). For a
/// segment of one block there is no subtree: use [`blake3::hash`].
pub fn block_cv(index: u32, block_size: u32, data: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index as u64 * block_size as u64);
    h.update(data);
    h.finalize_non_root()
}

/// The CVs of every block of `data`, computed in parallel where the caller
/// runs this on a rayon pool per block. For a single-block segment the list
/// holds its root hash.
pub fn block_cvs(data: &[u8], block_size: u32) -> Vec<[u8; 32]> {
    let n = block_count(data.len() as u64, block_size);
    if n == 1 {
        return vec![*blake3::hash(data).as_bytes()];
    }
    data.chunks(block_size as usize)
        .enumerate()
        .map(|(i, b)| block_cv(i as u32, block_size, b))
        .collect()
}

/// Merges CVs of consecutive equal-size subtrees (the last may be smaller)
/// into their parent, left-balanced as BLAKE3 builds its tree.
fn merge(cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = largest_power_of_two_below(cvs.len());
    merge_subtrees_non_root(&merge(&cvs[..left]), &merge(&cvs[left..]), Mode::Hash)
}

fn largest_power_of_two_below(n: usize) -> usize {
    // n >= 2: the left subtree holds the largest power of two < n blocks.
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root hash that a list of block CVs merges into.
pub fn root_of(cvs: &[ChainingValue]) -> Option<blake3::Hash> {
    match cvs.len() {
        0 => None,
        1 => Some(blake3::Hash::from_bytes(cvs[0])),
        n => {
            let left = largest_power_of_two_below(n);
            Some(merge_subtrees_root(
                &merge(&cvs[..left]),
                &merge(&cvs[left..]),
                Mode::Hash,
            ))
        }
    }
}

/// The block list of the same bytes in blocks `per` times larger (`per` a
/// power of two), merged from a finer list: each larger block is a whole
/// subtree of the smaller ones. As in [`block_cvs`], a list of one block
/// holds the root hash.
pub fn coarser(cvs: &[ChainingValue], per: usize) -> Vec<ChainingValue> {
    if cvs.len() <= 1 || per <= 1 {
        return cvs.to_vec();
    }
    if cvs.len() <= per {
        return root_of(cvs)
            .map(|h| vec![*h.as_bytes()])
            .unwrap_or_default();
    }
    cvs.chunks(per).map(merge).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("block size {0} is not a power of two from 1 KiB to 16 MiB")]
    BlockSize(u32),
    #[error("the source lists {got} block hashes for {len} bytes, expected {expected}")]
    Count { len: u64, got: usize, expected: u64 },
    #[error("the source's block hashes merge to {got}, not the segment's BLAKE3 {expected}")]
    Root { got: String, expected: String },
    #[error("the source describes {got} bytes, the plan {expected}")]
    Length { got: u64, expected: u64 },
    #[error("block {0} is outside the segment")]
    Index(u32),
    #[error("block {index} is {got} bytes, expected {expected}")]
    BlockLength {
        index: u32,
        got: usize,
        expected: usize,
    },
    #[error("block {0} does not match its hash")]
    BlockHash(u32),
}

/// A block list checked against the segment's BLAKE3.
#[derive(Debug, Clone)]
pub struct VerifiedTree {
    len: u64,
    block_size: u32,
    cvs: Vec<ChainingValue>,
}

/// A block whose bytes were checked against a [`VerifiedTree`].
#[derive(Debug)]
pub struct VerifiedBlock {
    pub index: u32,
    pub offset: u64,
    pub data: Vec<u8>,
}

impl VerifiedTree {
    /// Accepts the source's CV list only if it merges into `expected` and
    /// describes `expected_len` bytes.
    pub fn new(
        expected: &blake3::Hash,
        expected_len: u64,
        len: u64,
        block_size: u32,
        cvs: Vec<[u8; 32]>,
    ) -> Result<Self, VerifyError> {
        if !valid_block_size(block_size) {
            return Err(VerifyError::BlockSize(block_size));
        }
        if len != expected_len {
            return Err(VerifyError::Length {
                got: len,
                expected: expected_len,
            });
        }
        let n = block_count(len, block_size);
        if cvs.len() as u64 != n {
            return Err(VerifyError::Count {
                len,
                got: cvs.len(),
                expected: n,
            });
        }
        let root = root_of(&cvs).ok_or(VerifyError::Count {
            len,
            got: 0,
            expected: n,
        })?;
        if root != *expected {
            return Err(VerifyError::Root {
                got: root.to_hex().to_string(),
                expected: expected.to_hex().to_string(),
            });
        }
        Ok(VerifiedTree {
            len,
            block_size,
            cvs,
        })
    }

    pub fn blocks(&self) -> u32 {
        self.cvs.len() as u32
    }

    /// The checked block list.
    pub fn cvs(&self) -> &[ChainingValue] {
        &self.cvs
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte range of block `index`.
    pub fn block_range(&self, index: u32) -> (u64, usize) {
        let off = index as u64 * self.block_size as u64;
        let len = (self.len.saturating_sub(off)).min(self.block_size as u64) as usize;
        (off, len)
    }

    /// Checks `data` as block `index`; the CPU-heavy part, meant for a rayon pool.
    pub fn verify_block(&self, index: u32, data: Vec<u8>) -> Result<VerifiedBlock, VerifyError> {
        let expected = self
            .cvs
            .get(index as usize)
            .ok_or(VerifyError::Index(index))?;
        let (offset, len) = self.block_range(index);
        if data.len() != len {
            return Err(VerifyError::BlockLength {
                index,
                got: data.len(),
                expected: len,
            });
        }
        let got = if self.cvs.len() == 1 {
            *blake3::hash(&data).as_bytes()
        } else {
            block_cv(index, self.block_size, &data)
        };
        if got != *expected {
            return Err(VerifyError::BlockHash(index));
        }
        Ok(VerifiedBlock {
            index,
            offset,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_coarser_list_merged_from_a_finer_one_is_the_list_of_larger_blocks() {
        for len in [
            0usize, 1, 1024, 4096, 4097, 9000, 16384, 16385, 40_000, 65536, 200_000,
        ] {
            let d = data(len);
            let fine = block_cvs(&d, 1024);
            for per in [1usize, 2, 4, 16, 64, 256] {
                let size = 1024 * per as u32;
                assert_eq!(coarser(&fine, per), block_cvs(&d, size), "len {len} x{per}");
            }
        }
    }

    #[test]
    fn cvs_merge_to_the_plain_hash_for_many_shapes() {
        for block_size in [1024u32, 2048, 4096, 65536] {
            for len in [
                0usize,
                1,
                1023,
                1024,
                1025,
                3000,
                4096,
                5000,
                65536,
                65537,
                200_000,
                1 << 20,
            ] {
                let d = data(len);
                let cvs = block_cvs(&d, block_size);
                assert_eq!(
                    root_of(&cvs),
                    Some(blake3::hash(&d)),
                    "len {len} block {block_size}"
                );
            }
        }
    }

    #[test]
    fn every_block_verifies_and_a_flipped_bit_does_not() {
        let d = data(300_000);
        let h = blake3::hash(&d);
        let tree = VerifiedTree::new(
            &h,
            d.len() as u64,
            d.len() as u64,
            65536,
            block_cvs(&d, 65536),
        )
        .unwrap();
        for i in 0..tree.blocks() {
            let (off, len) = tree.block_range(i);
            let block = d[off as usize..off as usize + len].to_vec();
            assert!(tree.verify_block(i, block.clone()).is_ok());
            let mut bad = block;
            bad[len / 2] ^= 1;
            assert_eq!(
                tree.verify_block(i, bad).unwrap_err(),
                VerifyError::BlockHash(i)
            );
        }
    }

    #[test]
    fn a_cv_list_for_other_bytes_is_refused() {
        let d = data(300_000);
        let mut other = d.clone();
        other[5] ^= 1;
        let h = blake3::hash(&d);
        let err = VerifiedTree::new(
            &h,
            d.len() as u64,
            d.len() as u64,
            65536,
            block_cvs(&other, 65536),
        );
        assert!(matches!(err, Err(VerifyError::Root { .. })));
        let short = VerifiedTree::new(
            &h,
            d.len() as u64,
            d.len() as u64,
            65536,
            block_cvs(&d, 65536)[1..].to_vec(),
        );
        assert!(matches!(short, Err(VerifyError::Count { .. })));
    }
}
