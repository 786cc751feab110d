//! Prices, token usage and the one rounding rule of the network.
//!
//! # Rounding rule
//!
//! All money is `i64` nanoTON. For a request with token counts `t_c` in each billed class
//! `c` (uncached prompt, cached prompt, plain completion, reasoning), model prices `p_c`
//! (nanoTON per 1 000 000 tokens), the worker's coefficient `k` (thousandths, 1000 = 1.0×)
//! and the network fee `f` (basis points of the charge):
//!
//! ```text
//! exact  = Σ t_c · p_c · k                          (an exact i128, in units of 10⁻⁹ nanoTON)
//! charge = ⌈ exact / 10⁹ ⌉                          round UP   — against the client
//! worker = ⌊ charge · (10 000 − f) / 10 000 ⌋       round DOWN — against the worker
//! fee    = charge − worker                          the remainder — to the fee account
//! ```
//!
//! so `charge == worker + fee` exactly, `0 <= worker <= charge`, `0 <= fee`, and no
//! nanoTON is created or lost. When a capture is capped (see `Ledger::capture`), the
//! capped charge is split by the same [`split`]. Every step is checked: a value that does
//! not fit is [`Error::Overflow`], never a wrap.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `coefficient` value meaning 1.0×.
pub const COEFFICIENT_ONE: u32 = 1_000;
/// `fee_bps` value meaning 100 %.
pub const BPS_ONE: u32 = 10_000;
/// Prices are per this many tokens.
pub const PRICE_UNIT_TOKENS: i64 = 1_000_000;

/// A model's price: nanoTON per 1 000 000 tokens of each class. Each component `>= 0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Price {
    pub prompt: i64,
    pub cached_prompt: i64,
    pub completion: i64,
    pub reasoning: i64,
}

impl Price {
    pub fn is_valid(&self) -> bool {
        self.prompt >= 0 && self.cached_prompt >= 0 && self.completion >= 0 && self.reasoning >= 0
    }
}

/// Token counts with OpenAI's meaning: `cached_prompt_tokens` is the part of
/// `prompt_tokens` served from cache and `reasoning_tokens` the part of `completion_tokens`
/// spent reasoning. A detail count larger than its total is clamped to the total (a
/// worker cannot bill one token twice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    /// `[uncached prompt, cached prompt, plain completion, reasoning]`: disjoint classes.
    pub fn billed_classes(&self) -> [u64; 4] {
        let cached = self.cached_prompt_tokens.min(self.prompt_tokens);
        let reasoning = self.reasoning_tokens.min(self.completion_tokens);
        [
            self.prompt_tokens - cached,
            cached,
            self.completion_tokens - reasoning,
            reasoning,
        ]
    }
}

impl From<&protocol::openai::Usage> for Usage {
    fn from(u: &protocol::openai::Usage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            cached_prompt_tokens: u.cached_prompt_tokens(),
            completion_tokens: u.completion_tokens,
            reasoning_tokens: u.reasoning_tokens(),
        }
    }
}

/// Who gets what of one charge: `charge == worker + fee`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Breakdown {
    /// Debited from the client.
    pub charge: i64,
    /// Credited to the worker.
    pub worker: i64,
    /// Credited to the network fee account.
    pub fee: i64,
}

/// The cost of `usage` at `price` × `coefficient` thousandths, split with a fee of
/// `fee_bps` basis points. The rounding rule is in the module docs.
pub fn cost(price: Price, usage: Usage, coefficient: u32, fee_bps: u32) -> Result<Breakdown> {
    if !price.is_valid() {
        return Err(Error::InvalidPrice {
            model: String::new(),
        });
    }
    let prices = [
        price.prompt,
        price.cached_prompt,
        price.completion,
        price.reasoning,
    ];
    let mut per_mille: i128 = 0; // Σ t_c · p_c
    for (tokens, p) in usage.billed_classes().into_iter().zip(prices) {
        let term = i128::from(tokens)
            .checked_mul(i128::from(p))
            .ok_or(Error::Overflow("tokens × price"))?;
        per_mille = per_mille
            .checked_add(term)
            .ok_or(Error::Overflow("sum of token classes"))?;
    }
    let exact = per_mille
        .checked_mul(i128::from(coefficient))
        .ok_or(Error::Overflow("× coefficient"))?;
    let denominator = i128::from(PRICE_UNIT_TOKENS) * i128::from(COEFFICIENT_ONE);
    // exact >= 0, so the ceiling is (exact + d − 1) / d; written without the addition
    // to stay clear of the i128 edge.
    let charge = exact / denominator + i128::from(exact % denominator != 0);
    let charge = i64::try_from(charge).map_err(|_| Error::Overflow("charge exceeds i64"))?;
    split(charge, fee_bps)
}

/// Splits `charge` between worker (rounded down) and fee (the remainder).
pub fn split(charge: i64, fee_bps: u32) -> Result<Breakdown> {
    if fee_bps > BPS_ONE {
        return Err(Error::InvalidFee(fee_bps));
    }
    if charge < 0 {
        return Err(Error::InvalidAmount(charge));
    }
    let worker = i128::from(charge) * i128::from(BPS_ONE - fee_bps) / i128::from(BPS_ONE);
    // 0 <= worker <= charge, so both conversions hold.
    let worker = i64::try_from(worker).map_err(|_| Error::Overflow("worker share"))?;
    let fee = charge.checked_sub(worker).ok_or(Error::Overflow("fee"))?;
    Ok(Breakdown {
        charge,
        worker,
        fee,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn price(p: i64, c: i64, o: i64, r: i64) -> Price {
        Price {
            prompt: p,
            cached_prompt: c,
            completion: o,
            reasoning: r,
        }
    }

    #[test]
    fn worked_example() {
        // 1000 prompt tokens (200 cached), 500 completion (100 reasoning) at 1.5×, 5 % fee.
        let p = price(1_000_000_000, 250_000_000, 3_000_000_000, 3_000_000_000);
        let u = Usage {
            prompt_tokens: 1000,
            cached_prompt_tokens: 200,
            completion_tokens: 500,
            reasoning_tokens: 100,
        };
        // 800·1e9 + 200·2.5e8 + 400·3e9 + 100·3e9 = 2.35e12 per mille; ×1500/1e9 = 3_525_000
        let b = cost(p, u, 1500, 500).unwrap();
        assert_eq!(
            b,
            Breakdown {
                charge: 3_525_000,
                worker: 3_348_750,
                fee: 176_250
            }
        );
    }

    #[test]
    fn rounds_up_for_client_down_for_worker() {
        // 1 token at 1 nanoTON / 1M tokens: exact 1e-6 nanoTON → charge 1.
        let b = cost(
            price(1, 0, 0, 0),
            Usage {
                prompt_tokens: 1,
                ..Usage::default()
            },
            1000,
            0,
        );
        assert_eq!(
            b.unwrap(),
            Breakdown {
                charge: 1,
                worker: 1,
                fee: 0
            }
        );
        // fee 1 bps of 1 nanoTON: worker ⌊0.9999⌋ = 0, fee gets the remainder.
        assert_eq!(
            split(1, 1).unwrap(),
            Breakdown {
                charge: 1,
                worker: 0,
                fee: 1
            }
        );
        assert_eq!(split(0, 500).unwrap(), Breakdown::default());
        assert_eq!(
            split(10_000, 10_000).unwrap(),
            Breakdown {
                charge: 10_000,
                worker: 0,
                fee: 10_000
            }
        );
    }

    #[test]
    fn clamps_details_to_totals() {
        let u = Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 50,
            completion_tokens: 5,
            reasoning_tokens: 9,
        };
        assert_eq!(u.billed_classes(), [0, 10, 0, 5]);
    }

    #[test]
    fn rejects_overflow_and_bad_inputs() {
        let huge = Usage {
            prompt_tokens: u64::MAX,
            ..Usage::default()
        };
        assert!(matches!(
            cost(price(i64::MAX, 0, 0, 0), huge, u32::MAX, 0),
            Err(Error::Overflow(_))
        ));
        assert!(matches!(
            cost(price(i64::MAX, 0, 0, 0), huge, 1000, 0),
            Err(Error::Overflow(_))
        ));
        let all = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            ..Usage::default()
        };
        assert!(matches!(
            cost(price(i64::MAX, 0, i64::MAX, 0), all, 1000, 0),
            Err(Error::Overflow(_))
        ));
        assert!(matches!(
            cost(price(-1, 0, 0, 0), Usage::default(), 1000, 0),
            Err(Error::InvalidPrice { .. })
        ));
        assert!(matches!(split(5, 10_001), Err(Error::InvalidFee(10_001))));
        // The largest charge that fits is fine.
        let b = split(i64::MAX, 9_999).unwrap();
        assert_eq!(b.worker.checked_add(b.fee), Some(i64::MAX));
    }

    /// A log-uniform random value in `[0, 2^bits)`, so small and huge values both occur.
    fn log_uniform(rng: &mut StdRng, max_bits: u32) -> u64 {
        let bits = rng.gen_range(0..=max_bits);
        if bits == 0 {
            0
        } else {
            rng.gen::<u64>() >> (64 - bits)
        }
    }

    #[test]
    fn property_no_nanoton_created_or_lost() {
        let mut rng = StdRng::seed_from_u64(0x00c0_c00e);
        let denominator = i128::from(PRICE_UNIT_TOKENS) * i128::from(COEFFICIENT_ONE);
        let (mut ok, mut overflow) = (0u32, 0u32);
        for _ in 0..200_000 {
            let p = price(
                log_uniform(&mut rng, 63) as i64,
                log_uniform(&mut rng, 63) as i64,
                log_uniform(&mut rng, 63) as i64,
                log_uniform(&mut rng, 63) as i64,
            );
            let u = Usage {
                prompt_tokens: log_uniform(&mut rng, 64),
                cached_prompt_tokens: log_uniform(&mut rng, 64),
                completion_tokens: log_uniform(&mut rng, 64),
                reasoning_tokens: log_uniform(&mut rng, 64),
            };
            let k = log_uniform(&mut rng, 32) as u32;
            let f = rng.gen_range(0..=BPS_ONE);
            // The exact value in arbitrary precision (i128 pieces summed without overflow
            // where possible; if even that overflows, cost must report overflow).
            let exact: Option<i128> = u
                .billed_classes()
                .iter()
                .zip([p.prompt, p.cached_prompt, p.completion, p.reasoning])
                .try_fold(0i128, |acc, (t, pr)| {
                    acc.checked_add(i128::from(*t).checked_mul(i128::from(pr))?)
                })
                .and_then(|s| s.checked_mul(i128::from(k)));
            match cost(p, u, k, f) {
                Ok(b) => {
                    ok += 1;
                    let exact = exact.unwrap();
                    assert_eq!(b.charge, b.worker + b.fee, "{p:?} {u:?} {k} {f}");
                    assert!(b.worker >= 0 && b.fee >= 0 && b.worker <= b.charge);
                    // charge is the least integer >= exact / 1e9
                    assert!(i128::from(b.charge) * denominator >= exact);
                    assert!((i128::from(b.charge) - 1) * denominator < exact);
                    // worker is the greatest integer <= charge · (1 − f)
                    let share = i128::from(b.charge) * i128::from(BPS_ONE - f);
                    assert!(i128::from(b.worker) * i128::from(BPS_ONE) <= share);
                    assert!((i128::from(b.worker) + 1) * i128::from(BPS_ONE) > share);
                }
                Err(Error::Overflow(_)) => {
                    overflow += 1;
                    // Overflow only when the true charge does not fit an i64.
                    if let Some(exact) = exact {
                        assert!(
                            exact / denominator >= i128::from(i64::MAX),
                            "{p:?} {u:?} {k}"
                        );
                    }
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(
            ok > 10_000 && overflow > 1_000,
            "ok {ok}, overflow {overflow}"
        );
    }

    #[test]
    fn property_split_is_exact_and_monotone() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100_000 {
            let charge = log_uniform(&mut rng, 63) as i64;
            let f = rng.gen_range(0..=BPS_ONE);
            let b = split(charge, f).unwrap();
            assert_eq!(b.worker + b.fee, charge);
            let more = split(charge.saturating_add(1), f).unwrap();
            assert!(more.worker >= b.worker && more.fee >= b.fee);
        }
    }
}
