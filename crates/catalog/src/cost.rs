//! What one poll of a trigger costs in GHL requests, from its read strategy and pagination:
//! the figure `flowd catalog show` prints and `flowd plan` adds up against GHL's budget.

use crate::model::{DedupeMode, Pagination, ReadSpec, TriggerSpec};

/// Days a time-window trigger reads on every poll (flowd: one day back, four weeks ahead).
pub const WINDOW_DAYS: u32 = 29;

/// Requests of one poll, as a function of what the endpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollCost {
    /// The same number whatever the account holds (one record, one response, windows).
    Fixed(u64),
    /// Every page of the collection: ⌈records / page⌉, at least one.
    Pages { page: u64 },
    /// Records changed within the lookback window, a page at a time: one request when idle.
    Changed { page: u64 },
}

impl PollCost {
    /// Requests one poll sends when the collection holds `records` and `changed` of them
    /// were written within the lookback window.
    pub fn requests(self, records: u64, changed: u64) -> u64 {
        match self {
            PollCost::Fixed(n) => n,
            PollCost::Pages { page } => records.div_ceil(page.max(1)).max(1),
            // A full last page asks once more to learn it was the last.
            PollCost::Changed { page } => changed / page.max(1) + 1,
        }
    }

    /// In words, for `flowd catalog show` and `flowd plan`.
    pub fn describe(self) -> String {
        match self {
            PollCost::Fixed(1) => "1 request".into(),
            PollCost::Fixed(n) => format!("{n} requests"),
            PollCost::Pages { page } => format!("1 request per {page} records held (grows with the account)"),
            PollCost::Changed { page } => {
                format!("1 request, plus 1 per {page} records changed within the lookback")
            }
        }
    }
}

impl TriggerSpec {
    /// The cost of one poll with a flow's dedupe mode.
    pub fn poll_cost(&self, mode: DedupeMode) -> PollCost {
        let read = self.read_spec();
        let incremental = read.mode(mode).is_some();
        let pagination = match read.as_ref() {
            ReadSpec::Search { pagination, .. } => pagination,
            _ => &self.pagination,
        };
        match pagination {
            Pagination::None | Pagination::SingleRecord | Pagination::SingleFile => PollCost::Fixed(1),
            Pagination::TimeWindow { max_span_days, .. } => {
                PollCost::Fixed(u64::from(WINDOW_DAYS.div_ceil((*max_span_days).max(1))))
            }
            Pagination::Offset { limit, .. }
            | Pagination::Page { limit, .. }
            | Pagination::Cursor { limit, .. }
            | Pagination::LastItem { limit, .. } => {
                let page = u64::from(*limit);
                if incremental {
                    PollCost::Changed { page }
                } else {
                    PollCost::Pages { page }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_by_size() {
        assert_eq!(PollCost::Pages { page: 100 }.requests(20_000, 0), 200);
        assert_eq!(PollCost::Pages { page: 100 }.requests(0, 0), 1);
        assert_eq!(PollCost::Changed { page: 100 }.requests(20_000, 0), 1);
        assert_eq!(PollCost::Changed { page: 100 }.requests(20_000, 250), 3);
        assert_eq!(PollCost::Fixed(2).requests(20_000, 9), 2);
    }
}
