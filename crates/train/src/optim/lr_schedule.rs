//! Learning-rate schedules, matching CoreNet's `BaseLRScheduler` + `CosineScheduler`
//! (corenet-spec.md §2.3) to the last printed digit.
//!
//! For iteration `it` (the number of optimizer updates already taken, i.e. the step counter
//! *before* the step) with `W = warmup_iterations`, `M = max_iterations`:
//!
//! - `it < W`: `lr = warmup_init_lr + it * ((max_lr - warmup_init_lr) / W)` (linear warmup;
//!   reaches `max_lr` only at `it = W`).
//! - `it >= W`: `t = it - W`, period `P = M - W + 1`, then per schedule kind
//!   - cosine: `lr = min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * t / P))`
//!   - linear: `lr = max_lr - (max_lr - min_lr) * t / P`
//!   - constant: `lr = max_lr`
//! - `lr` is clamped at `>= 0` and rounded to 8 decimal places, as CoreNet does before writing it
//!   into the optimizer's parameter groups.
//!
//! The LR must be set before every forward (every micro-batch) from the current step counter.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Key prefix used in validation messages: the recipe section these configs live under.
const KEY_PREFIX: &str = "schedule";

/// Decimal places CoreNet rounds every LR to (`BaseLRScheduler.round_places`).
const ROUND_PLACES: usize = 8;

/// Shape of the schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// CoreNet's `cosine`: half a cosine from `max_lr` down to `min_lr` over the period.
    Cosine,
    /// Straight line from `max_lr` down to `min_lr` over the same period as cosine.
    Linear,
    /// `max_lr` after warmup (`min_lr` unused).
    Constant,
}

/// Schedule section of a recipe. Names follow CoreNet's `scheduler.*` / `scheduler.cosine.*` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `cosine`, `linear` or `constant`.
    pub name: ScheduleKind,
    /// Peak LR, reached at the end of warmup.
    pub max_lr: f64,
    /// Floor of the decay (CoreNet's OpenELM recipes use 0.1 × max_lr).
    #[serde(default)]
    pub min_lr: f64,
    /// Number of linear-warmup iterations (0 = no warmup).
    #[serde(default)]
    pub warmup_iterations: u64,
    /// LR at iteration 0 of warmup.
    #[serde(default)]
    pub warmup_init_lr: f64,
    /// Last iteration index the trainer runs (CoreNet runs `0..=max_iterations`).
    pub max_iterations: u64,
}

impl ScheduleConfig {
    /// Checks ranges and consistency; errors name the key (`schedule.min_lr`, ...).
    pub fn validate(&self) -> Result<()> {
        let key = |field: &str| format!("{KEY_PREFIX}.{field}");
        for (field, value) in [
            ("max_lr", self.max_lr),
            ("min_lr", self.min_lr),
            ("warmup_init_lr", self.warmup_init_lr),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(Error::config(
                    key(field),
                    format!("must be a finite number >= 0, got {value}"),
                ));
            }
        }
        if self.max_lr == 0.0 {
            return Err(Error::config(key("max_lr"), "must be > 0"));
        }
        if self.name != ScheduleKind::Constant && self.min_lr > self.max_lr {
            return Err(Error::config(
                key("min_lr"),
                format!("min_lr {} is above max_lr {}", self.min_lr, self.max_lr),
            ));
        }
        if self.max_iterations == 0 {
            return Err(Error::config(key("max_iterations"), "must be > 0"));
        }
        // A warmup longer than the run would make the decay period <= 0.
        if self.warmup_iterations > self.max_iterations {
            return Err(Error::config(
                key("warmup_iterations"),
                format!(
                    "{} exceeds max_iterations {}",
                    self.warmup_iterations, self.max_iterations
                ),
            ));
        }
        Ok(())
    }
}

/// A validated schedule: a pure function from iteration to LR.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    config: ScheduleConfig,
    /// `(max_lr - warmup_init_lr) / W`, precomputed like CoreNet so the floating-point
    /// operation order (and hence every rounded value) is the same.
    warmup_step: f64,
    /// `P = M - W + 1`.
    period: f64,
}

impl Schedule {
    /// Validates `config` and precomputes the warmup slope and decay period.
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        config.validate()?;
        let warmup_step = if config.warmup_iterations > 0 {
            (config.max_lr - config.warmup_init_lr) / config.warmup_iterations as f64
        } else {
            0.0
        };
        let period = (config.max_iterations - config.warmup_iterations + 1) as f64;
        Ok(Self {
            config: config.clone(),
            warmup_step,
            period,
        })
    }

    /// The config this schedule was built from.
    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// LR for iteration `it` exactly as CoreNet writes it into the optimizer: clamped at 0 and
    /// rounded to 8 decimal places.
    ///
    /// Iterations past `max_iterations` hold the LR of `max_iterations` (CoreNet never
    /// evaluates them: its loop stops after `it = max_iterations`; the raw cosine would rise again).
    pub fn lr(&self, it: u64) -> f64 {
        round_decimal(self.lr_unrounded(it), ROUND_PLACES)
    }

    /// LR before the 8-decimal rounding (still clamped at 0), for plots and tests.
    pub fn lr_unrounded(&self, it: u64) -> f64 {
        let c = &self.config;
        let it = it.min(c.max_iterations);
        let lr = if it < c.warmup_iterations {
            c.warmup_init_lr + it as f64 * self.warmup_step
        } else {
            let t = (it - c.warmup_iterations) as f64;
            match c.name {
                // Same expression shape as CoreNet's `cosine.py` (pi * t / P evaluated left to right).
                ScheduleKind::Cosine => {
                    c.min_lr
                        + 0.5
                            * (c.max_lr - c.min_lr)
                            * (1.0 + (std::f64::consts::PI * t / self.period).cos())
                }
                ScheduleKind::Linear => c.max_lr - (c.max_lr - c.min_lr) * t / self.period,
                ScheduleKind::Constant => c.max_lr,
            }
        };
        lr.max(0.0)
    }
}

/// Rounds like Python's `round(x, places)`: to the decimal nearest the exact binary value, ties
/// to even. Rust's fixed-precision formatting does exactly that (correctly rounded, half-even),
/// whereas `(x * 1e8).round() / 1e8` adds an extra rounding and rounds ties away from zero.
fn round_decimal(x: f64, places: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Parsing our own fixed-point output of a finite number cannot fail; fall back to x anyway
    // rather than panic in the training loop.
    format!("{x:.places$}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openelm_270m() -> ScheduleConfig {
        ScheduleConfig {
            name: ScheduleKind::Cosine,
            max_lr: 0.0053,
            min_lr: 0.00053,
            warmup_iterations: 5000,
            warmup_init_lr: 1e-6,
            max_iterations: 350_000,
        }
    }

    #[test]
    fn openelm_270m_check_values_from_spec() {
        let s = Schedule::new(&openelm_270m()).expect("valid config");
        let table: &[(u64, f64)] = &[
            (0, 1e-6),
            (1, 2.06e-6),
            (4999, 0.00529894),
            (5000, 0.0053),
            (100_000, 0.00446187),
            (177_500, 0.00291501),
            (349_999, 0.00053),
        ];
        for &(it, want) in table {
            // Both sides are the f64 nearest to an 8-decimal number, so equality is exact.
            assert_eq!(s.lr(it), want, "it={it}");
        }
    }

    /// The schedule re-derived from the spec's text, with no shared code or precomputation.
    fn spec_formula(c: &ScheduleConfig, it: u64) -> f64 {
        let (w, m) = (c.warmup_iterations as f64, c.max_iterations as f64);
        let itf = it as f64;
        let lr = if itf < w {
            c.warmup_init_lr + itf * (c.max_lr - c.warmup_init_lr) / w
        } else {
            let t = itf - w;
            let p = m - w + 1.0;
            c.min_lr + 0.5 * (c.max_lr - c.min_lr) * (1.0 + (std::f64::consts::PI * t / p).cos())
        };
        (lr.max(0.0) * 1e8).round() / 1e8
    }

    #[test]
    fn cosine_matches_independent_formula_at_many_steps() {
        for cfg in [
            openelm_270m(),
            ScheduleConfig {
                max_lr: 0.0024,
                min_lr: 0.00024,
                ..openelm_270m()
            },
            ScheduleConfig {
                warmup_iterations: 0,
                max_iterations: 1000,
                ..openelm_270m()
            },
            ScheduleConfig {
                warmup_iterations: 7,
                max_iterations: 97,
                max_lr: 3e-4,
                min_lr: 0.0,
                warmup_init_lr: 0.0,
                ..openelm_270m()
            },
        ] {
            let s = Schedule::new(&cfg).expect("valid config");
            let m = cfg.max_iterations;
            let steps = (0..=m).step_by((m / 997).max(1) as usize).chain([m - 1, m]);
            for it in steps {
                let (got, want) = (s.lr(it), spec_formula(&cfg, it));
                // The spec formula multiplies before dividing and rounds via *1e8, so it may land
                // one unit of the 8th decimal away on a near-tie; never more.
                assert!(
                    (got - want).abs() <= 1.000_001e-8,
                    "cfg={cfg:?} it={it}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn warmup_rises_and_cosine_falls_monotonically() {
        let s = Schedule::new(&openelm_270m()).expect("valid config");
        let mut prev = s.lr(0);
        for it in (1..=5000).step_by(7) {
            let lr = s.lr(it);
            assert!(lr >= prev, "warmup not monotone at {it}");
            prev = lr;
        }
        prev = s.lr(5000);
        for it in (5000..=350_000).step_by(331) {
            let lr = s.lr(it);
            assert!(lr <= prev, "decay not monotone at {it}");
            prev = lr;
        }
        assert_eq!(s.lr(350_000), 0.00053);
        // Past the end the LR holds instead of following the cosine back up.
        assert_eq!(s.lr(400_000), s.lr(350_000));
    }

    #[test]
    fn linear_and_constant_kinds() {
        let base = ScheduleConfig {
            warmup_iterations: 10,
            max_iterations: 109,
            max_lr: 1e-3,
            min_lr: 1e-4,
            warmup_init_lr: 0.0,
            ..openelm_270m()
        };
        let lin = Schedule::new(&ScheduleConfig {
            name: ScheduleKind::Linear,
            ..base.clone()
        })
        .expect("valid");
        assert_eq!(lin.lr(0), 0.0);
        assert_eq!(lin.lr(5), 0.0005);
        assert_eq!(lin.lr(10), 1e-3);
        // P = 100: halfway through the decay is the midpoint of max and min.
        assert_eq!(lin.lr(60), 0.00055);
        let con = Schedule::new(&ScheduleConfig {
            name: ScheduleKind::Constant,
            ..base
        })
        .expect("valid");
        assert_eq!(con.lr(5), 0.0005);
        assert_eq!(con.lr(10), 1e-3);
        assert_eq!(con.lr(109), 1e-3);
    }

    #[test]
    fn rounding_is_python_round_half_even_on_exact_value() {
        // 1/512 = 0.001953125 exactly: a true tie at 8 places; Python rounds to even.
        assert_eq!(round_decimal(0.001953125, 8), 0.00195312);
        assert_eq!(round_decimal(0.0009765625, 8), 0.00097656);
        // 1.5e-8 * (1 + eps) is just above the tie, so it goes up.
        assert_eq!(round_decimal(0.5e-8 * 3.0, 8), 2e-8);
        assert_eq!(round_decimal(0.0, 8), 0.0);
    }

    #[test]
    fn matches_python_corenet_formula_when_python_is_available() {
        // Python's round() and math.cos are the oracle CoreNet uses; skip if no interpreter.
        let script = "import math\n\
            W,M,l0,mx,mn=5000,350000,1e-6,0.0053,0.00053\n\
            ws=(mx-l0)/W; P=M-W+1\n\
            out=[]\n\
            for it in list(range(0,5001,13))+list(range(5000,350001,347)):\n\
            \x20   lr = l0+it*ws if it<W else mn+0.5*(mx-mn)*(1+math.cos(math.pi*(it-W)/P))\n\
            \x20   out.append('%d %r' % (it, round(max(0.0,lr),8)))\n\
            print('\\n'.join(out))\n";
        let output = match std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
        {
            Ok(o) if o.status.success() => o,
            _ => {
                eprintln!("SKIP: python3 not available for the CoreNet-formula oracle");
                return;
            }
        };
        let s = Schedule::new(&openelm_270m()).expect("valid config");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut n = 0;
        for line in text.lines() {
            let mut parts = line.split(' ');
            let it: u64 = parts
                .next()
                .and_then(|v| v.parse().ok())
                .expect("python step");
            let want: f64 = parts
                .next()
                .and_then(|v| v.parse().ok())
                .expect("python lr");
            assert_eq!(s.lr(it), want, "it={it}");
            n += 1;
        }
        assert!(n > 1000, "python produced only {n} values");
    }

    #[test]
    fn config_parses_and_rejects_bad_values() {
        let cfg: ScheduleConfig = serde_json::from_value(serde_json::json!({
            "name": "cosine", "max_lr": 0.0053, "min_lr": 0.00053,
            "warmup_iterations": 5000, "warmup_init_lr": 1e-6, "max_iterations": 350000
        }))
        .expect("parses");
        assert_eq!(cfg, openelm_270m());

        let unknown = serde_json::from_value::<ScheduleConfig>(serde_json::json!({
            "name": "cosine", "max_lr": 1.0, "max_iterations": 10, "warmup_iters": 3
        }));
        assert!(unknown.is_err_and(|e| e.to_string().contains("warmup_iters")));
        let bad_name = serde_json::from_value::<ScheduleConfig>(serde_json::json!({
            "name": "cosin", "max_lr": 1.0, "max_iterations": 10
        }));
        assert!(bad_name.is_err());

        let err = |c: ScheduleConfig| c.validate().expect_err("should be invalid").to_string();
        assert!(err(ScheduleConfig {
            min_lr: 0.1,
            ..openelm_270m()
        })
        .contains("schedule.min_lr"));
        assert!(err(ScheduleConfig {
            max_lr: f64::NAN,
            ..openelm_270m()
        })
        .contains("schedule.max_lr"));
        assert!(err(ScheduleConfig {
            max_lr: 0.0,
            min_lr: 0.0,
            ..openelm_270m()
        })
        .contains("schedule.max_lr"));
        assert!(err(ScheduleConfig {
            warmup_init_lr: -1.0,
            ..openelm_270m()
        })
        .contains("schedule.warmup_init_lr"));
        assert!(err(ScheduleConfig {
            warmup_iterations: 400_000,
            ..openelm_270m()
        })
        .contains("schedule.warmup_iterations"));
        assert!(err(ScheduleConfig {
            max_iterations: 0,
            warmup_iterations: 0,
            ..openelm_270m()
        })
        .contains("schedule.max_iterations"));
        // Warmup as long as the whole run is allowed (period 1).
        assert!(ScheduleConfig {
            warmup_iterations: 350_000,
            ..openelm_270m()
        }
        .validate()
        .is_ok());
    }
}
