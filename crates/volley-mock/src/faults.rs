//! Which fault, if any, a request gets, and the deterministic randomness behind it.

use crate::config::MockConfig;

/// What happens to an admitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 500, 502 or 503.
    Fail(u16),
    Hang,
    Malformed,
    Reset,
}

/// SplitMix64: tiny, fast, and good enough to roll dice reproducibly.
#[derive(Debug, Clone)]
pub struct Dice(u64);

impl Dice {
    /// The dice of request number `n` under `seed`.
    pub fn for_request(seed: u64, n: u64) -> Dice {
        let mut d = Dice(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        d.next_u64();
        d
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// Uniform in `[0, max]`.
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// SplitMix64's finaliser: every input bit reaches every output bit, so nearby inputs
/// (request numbers, hashes that differ in their last byte) give unrelated outputs.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits as a number uniform in `[0, 1)`: the top 53 bits, all an `f64`
/// holds exactly, so the result can never round up to 1.
pub fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Rolls the fault bands in order: fail, hang, malformed, reset.
pub fn roll(config: &MockConfig, dice: &mut Dice) -> Fault {
    let u = dice.unit();
    let mut edge = config.fail_rate;
    if u < edge {
        const STATUSES: [u16; 3] = [500, 502, 503];
        return Fault::Fail(STATUSES[(dice.next_u64() % 3) as usize]);
    }
    edge += config.hang_rate;
    if u < edge {
        return Fault::Hang;
    }
    edge += config.malformed_rate;
    if u < edge {
        return Fault::Malformed;
    }
    edge += config.reset_rate;
    if u < edge {
        return Fault::Reset;
    }
    Fault::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_faults_and_rates_hold() {
        let config = MockConfig {
            fail_rate: 0.1,
            hang_rate: 0.1,
            malformed_rate: 0.1,
            reset_rate: 0.1,
            seed: 9,
            ..MockConfig::default()
        };
        let run = |seed| {
            (0..1000)
                .map(|n| roll(&config, &mut Dice::for_request(seed, n)))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
        let faults = run(9);
        let none = faults.iter().filter(|f| **f == Fault::None).count();
        assert!((500..700).contains(&none), "{none}");
        assert!(faults.iter().any(|f| matches!(f, Fault::Fail(502))));
        assert!(faults.contains(&Fault::Reset));
    }

    #[test]
    fn units_stay_below_one() {
        assert_eq!(unit(0), 0.0);
        assert_eq!(unit(1 << 63), 0.5);
        assert!(unit(u64::MAX) < 1.0);
        let mut dice = Dice::for_request(3, 4);
        assert!(
            (0..10_000)
                .map(|_| dice.unit())
                .all(|u| (0.0..1.0).contains(&u))
        );
    }

    #[test]
    fn zero_rates_never_fault() {
        let config = MockConfig::default();
        assert!((0..1000).all(|n| roll(&config, &mut Dice::for_request(1, n)) == Fault::None));
    }
}
