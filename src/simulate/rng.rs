//! A small seeded random number generator (xoshiro256**, seeded through SplitMix64) and the
//! distributions the simulator draws from. Same seed, same numbers, on every machine.

/// SplitMix64: expands one `u64` seed into well-mixed state words.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// xoshiro256**: fast, small, good statistical quality for simulation.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`; `stream` selects an independent sequence for the same seed.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut sm = SplitMix64::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut s = [0u64; 4];
        for w in &mut s {
            *w = sm.next_u64();
        }
        if s == [0; 4] {
            s[0] = 1;
        }
        Self { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1]: never 0, so `ln` is always finite.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Exponential with the given rate (mean `1/rate`).
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -self.uniform().ln() / rate
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Gamma with `shape` k and the given mean (scale = mean / k), by Marsaglia and Tsang.
    /// Shape 1 is exponential; larger shapes are less variable (coefficient of variation
    /// 1/√k).
    pub fn gamma(&mut self, shape: f64, mean: f64) -> f64 {
        let scale = mean / shape;
        if shape < 1.0 {
            // Boost: Gamma(k) = Gamma(k + 1) · U^(1/k).
            let g = self.gamma(shape + 1.0, shape + 1.0);
            return g * self.uniform().powf(1.0 / shape) * scale;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.uniform();
            if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
                return d * v * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
        (m, v)
    }

    #[test]
    fn same_seed_same_numbers_streams_differ() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7, 0);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7, 0);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7, 1);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn distributions_have_their_moments() {
        let mut r = Rng::new(42, 0);
        let u: Vec<f64> = (0..100_000).map(|_| r.uniform()).collect();
        assert!(u.iter().all(|x| *x > 0.0 && *x <= 1.0));
        let (m, _) = mean_var(&u);
        assert!((m - 0.5).abs() < 0.01, "{m}");
        let e: Vec<f64> = (0..100_000).map(|_| r.exponential(4.0)).collect();
        let (m, v) = mean_var(&e);
        assert!((m - 0.25).abs() < 0.005, "{m}");
        assert!((v - 0.0625).abs() < 0.005, "{v}");
        for shape in [0.5, 1.0, 2.0, 9.0] {
            let g: Vec<f64> = (0..100_000).map(|_| r.gamma(shape, 2.0)).collect();
            let (m, v) = mean_var(&g);
            // Mean 2, variance mean²/k.
            assert!((m - 2.0).abs() < 0.05, "shape {shape}: mean {m}");
            let want = 4.0 / shape;
            assert!(
                (v - want).abs() < 0.1 * want,
                "shape {shape}: var {v} want {want}"
            );
        }
    }
}
