//! Exact order statistics of values that can be read again, in memory that does not
//! grow with their number: the latency percentiles of a run's answers are found by
//! reading `answers.jsonl` a few more times instead of holding every latency.
//!
//! A value's rank is in `f64::total_cmp` order. Each pass narrows the bucket holding
//! the wanted rank by [`DIGIT`] more bits of the value's order-preserving key (a
//! histogram of those bits among the values still in the bucket); once the bucket
//! holds at most [`COLLECT`] values, the next pass collects and sorts them. A value is
//! found in a few passes: the first (the histogram of sign and exponent) is taken
//! while the file is read for everything else, and latencies spread over a few
//! powers of two then need one pass to narrow and one to collect.

/// Bits of the key a pass narrows by.
const DIGIT: u32 = 12;

/// A bucket of at most this many values is collected and sorted on the next pass.
const COLLECT: u64 = 4096;

/// The values changed between two passes (the file was rewritten meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the values changed between two readings")]
pub struct Changed;

/// An unsigned key ordered as `f64::total_cmp` orders the values.
fn key(value: f64) -> u64 {
    let bits = value.to_bits() as i64;
    // As `total_cmp`: a negative value's other bits are flipped, then signed order.
    let ordered = bits ^ ((((bits >> 63) as u64) >> 1) as i64);
    (ordered as u64) ^ (1 << 63)
}

/// The value of `key` (its inverse).
fn value_of(key: u64) -> f64 {
    let ordered = (key ^ (1 << 63)) as i64;
    let bits = ordered ^ ((((ordered >> 63) as u64) >> 1) as i64);
    f64::from_bits(bits as u64)
}

/// The histogram of the first [`DIGIT`] bits of the keys of every value: the first
/// pass of each [`Select`] over the same values.
#[derive(Debug, Default)]
pub struct Histogram(Vec<u64>);

impl Histogram {
    pub fn add(&mut self, value: f64) {
        if self.0.is_empty() {
            self.0 = vec![0; 1 << DIGIT];
        }
        self.0[(key(value) >> (64 - DIGIT)) as usize] += 1;
    }
}

/// The value of one rank among values fed again on each pass, until [`Select::found`].
#[derive(Debug)]
pub struct Select {
    /// The rank still wanted among the values in the bucket.
    rank: u64,
    /// The bucket: the keys whose top `known` bits are those of `prefix`.
    prefix: u64,
    known: u32,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Counting the next bits of the keys in the bucket.
    Count(Vec<u64>),
    /// Keeping the values in the bucket, this many expected.
    Collect(u64, Vec<f64>),
    Found(f64),
}

impl Select {
    /// The value of rank `rank` (from 0) among values whose first pass is `first`.
    pub fn new(rank: u64, first: &Histogram) -> Result<Select, Changed> {
        let mut select = Select {
            rank,
            prefix: 0,
            known: 0,
            state: State::Count(Vec::new()),
        };
        select.narrow(&first.0)?;
        Ok(select)
    }

    /// The value, once found.
    pub fn found(&self) -> Option<f64> {
        match self.state {
            State::Found(value) => Some(value),
            _ => None,
        }
    }

    /// The bits a pass counts: [`DIGIT`], fewer for the last ones.
    fn digit(&self) -> u32 {
        DIGIT.min(64 - self.known)
    }

    fn in_bucket(&self, key: u64) -> bool {
        self.known == 0 || key >> (64 - self.known) == self.prefix >> (64 - self.known)
    }

    /// One value of this pass: each value once per pass, the same values each pass.
    pub fn feed(&mut self, value: f64) {
        let key = key(value);
        if !self.in_bucket(key) {
            return;
        }
        let (known, digit) = (self.known, self.digit());
        match &mut self.state {
            State::Count(counts) => counts[((key << known) >> (64 - digit)) as usize] += 1,
            State::Collect(_, values) => values.push(value),
            State::Found(_) => {}
        }
    }

    /// Ends a pass: the bucket narrowed, or the value found.
    pub fn end_pass(&mut self) -> Result<(), Changed> {
        match std::mem::replace(&mut self.state, State::Count(Vec::new())) {
            State::Count(counts) => self.narrow(&counts),
            State::Collect(expected, mut values) => {
                if values.len() as u64 != expected {
                    return Err(Changed);
                }
                values.sort_unstable_by(f64::total_cmp);
                let value = *values.get(self.rank as usize).ok_or(Changed)?;
                self.state = State::Found(value);
                Ok(())
            }
            found @ State::Found(_) => {
                self.state = found;
                Ok(())
            }
        }
    }

    /// Narrows the bucket to the one of `counts` (the next bits' histogram) that holds
    /// the rank.
    fn narrow(&mut self, counts: &[u64]) -> Result<(), Changed> {
        let digit = self.digit();
        let mut below = 0;
        let (bucket, count) = counts
            .iter()
            .enumerate()
            .find_map(|(bucket, &count)| {
                if self.rank < below + count {
                    return Some((bucket, count));
                }
                below += count;
                None
            })
            .ok_or(Changed)?;
        self.rank -= below;
        self.known += digit;
        self.prefix |= (bucket as u64) << (64 - self.known);
        self.state = if self.known == 64 {
            // Every value in the bucket has this key.
            State::Found(value_of(self.prefix))
        } else if count <= COLLECT {
            State::Collect(count, Vec::with_capacity(count as usize))
        } else {
            State::Count(vec![0; 1 << self.digit()])
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every rank of `values` by passes, against a sort.
    fn check(values: &[f64]) {
        let mut sorted = values.to_vec();
        sorted.sort_unstable_by(f64::total_cmp);
        let mut first = Histogram::default();
        values.iter().for_each(|&v| first.add(v));
        for (rank, expected) in sorted.iter().enumerate() {
            let mut select = Select::new(rank as u64, &first).unwrap();
            let mut passes = 1;
            while select.found().is_none() {
                values.iter().for_each(|&v| select.feed(v));
                select.end_pass().unwrap();
                passes += 1;
                assert!(passes <= 6, "too many passes");
            }
            assert_eq!(select.found().unwrap().to_bits(), expected.to_bits());
        }
    }

    #[test]
    fn keys_order_as_total_cmp_and_invert() {
        let values = [
            f64::NEG_INFINITY,
            -1e300,
            -1.5,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            1.0,
            145.201088,
            f64::INFINITY,
        ];
        for pair in values.windows(2) {
            assert!(key(pair[0]) < key(pair[1]), "{pair:?}");
        }
        for v in values {
            assert_eq!(value_of(key(v)).to_bits(), v.to_bits());
        }
    }

    #[test]
    fn ranks_are_found_in_narrow_and_wide_buckets() {
        check(&[3.0]);
        check(&[2.0, 2.0, 2.0, 1.0]);
        // Many values in one power of two, many equal ones, and a spread.
        let mut values: Vec<f64> = (0..20_000)
            .map(|i| 128.0 + (i % 9973) as f64 / 100.0)
            .collect();
        values.extend(std::iter::repeat_n(0.25, 9000));
        values.extend((0..3000).map(|i| 1.0 + f64::from(i) * 1e-12));
        let mut first = Histogram::default();
        values.iter().for_each(|&v| first.add(v));
        let mut sorted = values.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        for rank in [0, 1, 8999, 9000, 10_000, 15_999, 16_000, sorted.len() - 1] {
            let mut select = Select::new(rank as u64, &first).unwrap();
            while select.found().is_none() {
                values.iter().for_each(|&v| select.feed(v));
                select.end_pass().unwrap();
            }
            assert_eq!(select.found(), Some(sorted[rank]), "rank {rank}");
        }
    }

    #[test]
    fn values_that_change_between_passes_are_said() {
        let values: Vec<f64> = (0..100).map(f64::from).collect();
        let mut first = Histogram::default();
        values.iter().for_each(|&v| first.add(v));
        assert_eq!(Select::new(100, &first).err(), Some(Changed));
        let mut select = Select::new(50, &first).unwrap();
        values[..10].iter().for_each(|&v| select.feed(v));
        assert_eq!(select.end_pass(), Err(Changed));
    }

    proptest! {
        #[test]
        fn every_rank_is_the_sorted_value(values in proptest::collection::vec(
            prop_oneof![any::<f64>(), (0u32..50).prop_map(f64::from), -1e3..1e3f64], 1..60)) {
            check(&values);
        }
    }
}
