//! The two choices of an A/B test that need no I/O: who is in the test slice, and which
//! variant wins.

use crate::document::ab_slice;
use crate::{CampaignId, RecipientId};

/// SplitMix64: a small generator whose output is fixed by this code, so a campaign's slice
/// is the same in every version and on every replica (a library's generator may change).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0), without modulo bias.
    fn below(&mut self, bound: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % bound;
        loop {
            let value = self.next();
            if value < zone {
                return value % bound;
            }
        }
    }
}

/// The test slice of an A/B test: `ids` shuffled by a generator seeded with the campaign id
/// (so the same campaign always draws the same slice), the first `test_fraction` of them
/// dealt to the variants in turn. Returns each slice recipient with its variant's index,
/// in id order; everyone else waits for the winner.
pub fn choose_slice(
    campaign_id: CampaignId,
    ids: &[RecipientId],
    test_fraction: f64,
    variants: usize,
) -> Vec<(RecipientId, u8)> {
    let (sizes, _) = ab_slice(ids.len() as u64, test_fraction, variants);
    let slice_len: u64 = sizes.iter().sum();
    let bytes = campaign_id.as_uuid().as_u128();
    let mut generator = SplitMix64((bytes >> 64) as u64 ^ bytes as u64);
    let mut shuffled = ids.to_vec();
    // A partial Fisher–Yates shuffle: only the slice's positions need drawing.
    for position in 0..slice_len as usize {
        let remaining = (shuffled.len() - position) as u64;
        let pick = position + generator.below(remaining) as usize;
        shuffled.swap(position, pick);
    }
    let mut slice: Vec<(RecipientId, u8)> = shuffled[..slice_len as usize]
        .iter()
        .enumerate()
        .map(|(position, &id)| (id, (position % variants.max(1)) as u8))
        .collect();
    slice.sort_unstable();
    slice
}

/// One variant's result in the test: messages delivered and the engagement compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VariantResult {
    pub delivered: i64,
    /// Unique opens or clicks (with aggregate-only tracking, which knows no recipient: all
    /// of them).
    pub events: i64,
}

impl VariantResult {
    /// Events per delivered message (0 when nothing was delivered).
    pub fn rate(&self) -> f64 {
        if self.delivered > 0 {
            self.events as f64 / self.delivered as f64
        } else {
            0.0
        }
    }
}

/// Why a variant won.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WinRule {
    /// It had the best rate alone.
    BestRate,
    /// Variants tied for the best rate: the first of them in the document wins.
    TieFirstVariant,
    /// No variant had a single event: the first variant wins.
    NoEventsFirstVariant,
    /// An operator chose it (`POST …/ab/winner`).
    Manual,
}

impl WinRule {
    pub fn as_str(self) -> &'static str {
        match self {
            WinRule::BestRate => "best_rate",
            WinRule::TieFirstVariant => "tie_first_variant",
            WinRule::NoEventsFirstVariant => "no_events_first_variant",
            WinRule::Manual => "manual",
        }
    }
}

/// The winner of a test by its results (in variant order): the best events-per-delivered
/// rate; among equal rates the first variant; with no events at all the first variant.
pub fn choose_winner(results: &[VariantResult]) -> (usize, WinRule) {
    if results.iter().all(|result| result.events == 0) {
        return (0, WinRule::NoEventsFirstVariant);
    }
    // Rates are compared exactly as fractions (a/b > c/d ⇔ a·d > c·b), so 1/3 ties 2/6.
    let better = |a: &VariantResult, b: &VariantResult| {
        let left = i128::from(a.events) * i128::from(b.delivered.max(1));
        let right = i128::from(b.events) * i128::from(a.delivered.max(1));
        left.cmp(&right)
    };
    let mut best = 0;
    for index in 1..results.len() {
        if better(&results[index], &results[best]) == std::cmp::Ordering::Greater {
            best = index;
        }
    }
    let tied = results
        .iter()
        .filter(|result| better(result, &results[best]) == std::cmp::Ordering::Equal)
        .count();
    let rule = if tied > 1 {
        WinRule::TieFirstVariant
    } else {
        WinRule::BestRate
    };
    (best, rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_is_reproducible_per_campaign_and_split_evenly() {
        let ids: Vec<RecipientId> = (1..=1000).map(RecipientId::new).collect();
        let campaign = CampaignId::now_v7();
        let slice = choose_slice(campaign, &ids, 0.3, 3);
        assert_eq!(slice.len(), 300);
        for variant in 0..3u8 {
            assert_eq!(slice.iter().filter(|(_, v)| *v == variant).count(), 100);
        }
        assert_eq!(slice, choose_slice(campaign, &ids, 0.3, 3));
        let other = choose_slice(CampaignId::now_v7(), &ids, 0.3, 3);
        assert_ne!(
            slice.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            other.iter().map(|(id, _)| *id).collect::<Vec<_>>()
        );
        // Drawn from the whole list, not its first ids.
        assert!(slice.iter().any(|(id, _)| id.get() > 700));
    }

    #[test]
    fn the_best_rate_wins_and_ties_keep_the_first_variant() {
        let result = |delivered, events| VariantResult { delivered, events };
        assert_eq!(
            choose_winner(&[result(100, 10), result(100, 30), result(100, 20)]),
            (1, WinRule::BestRate)
        );
        // 1/3 and 2/6 are the same rate: the first of the two wins.
        assert_eq!(
            choose_winner(&[result(100, 1), result(3, 1), result(6, 2)]),
            (1, WinRule::TieFirstVariant)
        );
        assert_eq!(
            choose_winner(&[result(100, 0), result(100, 0)]),
            (0, WinRule::NoEventsFirstVariant)
        );
        // A rate counts against delivered: fewer events on fewer messages can win.
        assert_eq!(
            choose_winner(&[result(100, 10), result(20, 5)]),
            (1, WinRule::BestRate)
        );
    }
}
