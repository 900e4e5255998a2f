//! Fan-out triggers: a per-record trigger (the tasks of *a* contact) polled for each record
//! a parent trigger (the contacts' search) yields. What can be a child, what can be a
//! parent, and what one fan-out poll costs.

use crate::model::{DedupeMode, Operation, Pagination, ParamIn, ReadSpec};

/// The most parents one fan-out poll reads: GHL's search returns at most this many
/// records per request, and a poll reads its parents in one request per kind.
pub const MAX_PER_POLL: u32 = 500;

/// The parents one fan-out poll reads when the flow does not say.
pub const DEFAULT_MAX_PER_POLL: u32 = 50;

/// How a parent is read for a fan-out: changed records first (by `changed_field`), then
/// the next records of a round-robin through all of them (by `sweep_field`), both by the
/// search's cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentRead<'a> {
    pub filters_param: &'a str,
    pub sort_param: &'a str,
    /// The cursor: `param` in the body takes `field` of the last record.
    pub cursor_param: &'a str,
    pub cursor_field: &'a str,
    pub limit_param: &'a str,
    /// The records' updated-at field: changed parents are read by it.
    pub changed_field: &'a str,
    /// The records' created-at field: the round-robin goes in its order, so records
    /// created during a round join at its end.
    pub sweep_field: &'a str,
}

impl Operation {
    /// The path parameter that names the one record a per-record trigger reads
    /// (`contactId` in `/contacts/{contactId}/tasks`): such a trigger can fan out over
    /// the records of a parent. Only a trigger whose one response holds the whole list
    /// qualifies, so a child read is exactly one request.
    pub fn fan_out_param(&self) -> Option<&str> {
        let spec = self.trigger.as_ref()?;
        if !matches!(spec.pagination, Pagination::None) {
            return None;
        }
        let mut path = self.params.iter().filter(|p| p.location == ParamIn::Path && p.required);
        let first = path.next()?;
        // Two path parameters name a record inside a record: not a list per parent. A
        // key such as `objectKey` names a kind of record, not one; a `locationId` is the
        // account itself.
        let per_record = first.name.ends_with("Id") && first.name != "locationId";
        (path.next().is_none() && per_record).then_some(first.name.as_str())
    }

    /// How this trigger is read as the parent of a fan-out, when it can be one: a search
    /// that sorts and filters by updated-at and created-at, by cursor.
    pub fn parent_read(&self) -> Option<ParentRead<'_>> {
        let spec = self.trigger.as_ref()?;
        let ReadSpec::Search { filters_param, sort_param, pagination, modes, .. } = spec.read.as_ref()? else {
            return None;
        };
        let Pagination::LastItem { param, field, limit_param, .. } = pagination else { return None };
        Some(ParentRead {
            filters_param,
            sort_param,
            cursor_param: param,
            cursor_field: field,
            limit_param,
            changed_field: &modes.get(&DedupeMode::Updated)?.field,
            sweep_field: &modes.get(&DedupeMode::New)?.field,
        })
    }
}

/// The fewest parents a fan-out poll may read: half of them may be changed ones, and the
/// round needs one besides its own request.
pub const MIN_PER_POLL: u32 = 4;

/// What fan-out polls cost and how long a round through every parent takes.
///
/// One poll reads the parents changed since the last poll (one request, up to half of
/// `max_per_poll` of them), then, with the room left, the next parents of the round-robin
/// (one request); one child request per parent read. It never sends more than
/// `max_per_poll + 1` requests: when both reads happen, the round-robin reads one parent
/// fewer to pay for its own request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOutCost {
    pub max_per_poll: u32,
}

impl FanOutCost {
    /// Changed parents one poll reads at most: half of them, so that however many change,
    /// the round goes on.
    pub fn changed_limit(self) -> u64 {
        u64::from(self.max_per_poll / 2).max(1)
    }

    /// Requests of one poll when `changed` parents changed since the last one and the
    /// parent holds `records` in all.
    pub fn requests(self, records: u64, changed: u64) -> u64 {
        let changed = changed.min(self.changed_limit()).min(records);
        let room = self.sweep_room(changed);
        let swept = room.min(records);
        1 + changed + u64::from(room > 0) + swept
    }

    /// Parents the round-robin reads in a poll that found `changed` changed parents.
    pub fn sweep_room(self, changed: u64) -> u64 {
        u64::from(self.max_per_poll).saturating_sub(changed.min(self.changed_limit())).saturating_sub(1)
    }

    /// Polls within which a round reads all `records` parents when none changes (at
    /// least one): a round that ends on a full page costs the next one a parent's room.
    pub fn polls_per_round(self, records: u64) -> u64 {
        (records + 1).div_ceil(self.sweep_room(0).max(1)).max(1)
    }

    /// The same while at least half a poll's worth of parents changes before every poll.
    pub fn busy_polls_per_round(self, records: u64) -> u64 {
        (records + 1).div_ceil(self.sweep_room(self.changed_limit()).max(1)).max(1)
    }

    /// In words, for `flowd catalog show` and `flowd plan`.
    pub fn describe(self) -> String {
        format!(
            "at most {} requests: 1 read of the changed parents (at most {}), then 1 read of the next {} parents \
             of the round (fewer when parents changed), and 1 request per parent read",
            u64::from(self.max_per_poll) + 1,
            self.changed_limit(),
            self.sweep_room(0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_record_lists_of_a_contact_fan_out_over_the_contacts_search() {
        let cat = crate::Catalog::builtin().expect("catalog");
        let children: Vec<&str> =
            cat.operations().iter().filter(|o| o.fan_out_param().is_some()).map(|o| o.key.as_str()).collect();
        assert_eq!(
            children,
            ["contacts.get_contact_appointments", "contacts.get_contact_tasks", "contacts.get_contact_notes"]
        );
        let parents: Vec<&str> =
            cat.operations().iter().filter(|o| o.parent_read().is_some()).map(|o| o.key.as_str()).collect();
        assert_eq!(parents, ["contacts.search_contacts"]);
        let read = cat.get("contacts.search_contacts").and_then(|o| o.parent_read()).expect("parent");
        assert_eq!(
            (read.changed_field, read.sweep_field, read.cursor_param),
            ("dateUpdated", "dateAdded", "searchAfter")
        );
    }

    #[test]
    fn a_poll_never_sends_more_than_max_per_poll_plus_one() {
        let c = FanOutCost { max_per_poll: 50 };
        // Idle: 1 changed read (empty) + 1 round read + 49 children.
        assert_eq!(c.requests(1_000, 0), 51);
        assert_eq!(c.requests(1_000, 10), 51);
        assert_eq!(c.requests(1_000, 25), 51);
        assert_eq!(c.requests(1_000, 500), 51);
        assert_eq!(FanOutCost { max_per_poll: 4 }.requests(1_000, 9), 5);
        // Fewer parents than the room: each is read once per poll.
        assert_eq!(c.requests(3, 0), 1 + 1 + 3);
        assert_eq!(c.polls_per_round(1_000), 21);
        assert_eq!(c.polls_per_round(0), 1);
        assert_eq!(FanOutCost { max_per_poll: 13 }.polls_per_round(120), 11);
        // However busy: 25 changed contacts a poll leave 24 for the round.
        assert_eq!(c.busy_polls_per_round(1_000), 42);
        assert_eq!(FanOutCost { max_per_poll: 4 }.busy_polls_per_round(10), 11);
    }
}
