//! The Schedule aggregate and the timing rules of its [`Recurrence`].
//!
//! Timing rules (pure; the scheduler supplies the tenant's time zone):
//!
//! - Minutes and hours repeat on absolute time: occurrences are
//!   `start + k * every` (k >= 0), so DST changes never alter their spacing.
//! - Days, weeks and months repeat on the tenant's wall clock: the local
//!   time of day of `start` on the local date `k * every` days, weeks or
//!   months after start's (so weekly runs keep start's weekday); `start`
//!   itself is always occurrence 0. Monthly runs
//!   keep start's day of month and use the last day of shorter months; each
//!   month is counted from the start, so 31 Jan, 28 Feb, 31 Mar.
//! - A wall time skipped by a spring-forward gap runs shifted by the gap's
//!   length (02:30 in a 02:00→03:00 gap runs at 03:30); an ambiguous wall
//!   time (fall-back) runs once, at the earlier instant. [`local_to_utc`]
//!   applies the same rule.
//! - An occurrence runs only if, at the local time it actually runs, its
//!   weekday is in `weekdays` and no disabled window covers it. A window
//!   covers `[from, to)` on its day (every day without one); when
//!   `to <= from` it ends on the next day (Mon 17:00–08:00 covers Monday
//!   evening up to Tuesday 08:00). Filtered occurrences are skipped, not moved.
//! - `end` is inclusive.
//! - Searches give up (return `None`) when no occurrence passes the filters
//!   within 400 days of the first candidate (28 years, the calendar's weekday
//!   cycle, for monthly schedules): filters that reject every run end the
//!   schedule instead of stalling the scheduler.

use chrono::{
    DateTime, Datelike, Days, LocalResult, Months, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeDelta, TimeZone, Timelike, Utc, Weekday,
};
use chrono_tz::Tz;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::settings::FieldError;
use crate::{DomainError, TenantId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RepeatUnit {
    Minutes,
    Hours,
    Days,
    Weeks,
    Months,
}

impl RepeatUnit {
    /// The largest accepted `every`: a year between runs (a week for minutes).
    pub fn max_every(self) -> u32 {
        match self {
            RepeatUnit::Minutes => 7 * 24 * 60,
            RepeatUnit::Hours => 365 * 24,
            RepeatUnit::Days => 365,
            RepeatUnit::Weeks => 52,
            RepeatUnit::Months => 12,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    pub const ALL: [Day; 7] = [
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ];
}

impl From<Weekday> for Day {
    fn from(day: Weekday) -> Self {
        Day::ALL[day.num_days_from_monday() as usize]
    }
}

impl From<Day> for Weekday {
    fn from(day: Day) -> Self {
        match day {
            Day::Mon => Weekday::Mon,
            Day::Tue => Weekday::Tue,
            Day::Wed => Weekday::Wed,
            Day::Thu => Weekday::Thu,
            Day::Fri => Weekday::Fri,
            Day::Sat => Weekday::Sat,
            Day::Sun => Weekday::Sun,
        }
    }
}

/// Local times at which occurrences are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisabledWindow {
    /// The day the window starts on; every day when absent.
    #[serde(default)]
    pub day: Option<Day>,
    #[serde(with = "hh_mm")]
    #[schema(value_type = String, example = "17:00")]
    pub from: NaiveTime,
    /// Exclusive; at or before `from` it falls on the next day.
    #[serde(with = "hh_mm")]
    #[schema(value_type = String, example = "08:00")]
    pub to: NaiveTime,
}

/// When a schedule's occurrences fall; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recurrence {
    /// The first occurrence. Wall-clock rules use its local time in the
    /// tenant's time zone.
    pub start: DateTime<Utc>,
    /// No occurrence after this instant (one exactly at it runs).
    #[serde(default)]
    pub end: Option<DateTime<Utc>>,
    pub every: u32,
    pub unit: RepeatUnit,
    /// Local weekdays on which occurrences may run.
    pub weekdays: Vec<Day>,
    #[serde(default)]
    pub disabled_windows: Vec<DisabledWindow>,
}

const MAX_WINDOWS: usize = 50;
const HORIZON_DAYS: i64 = 400;
const MONTHS_HORIZON_DAYS: i64 = 28 * 366;
const NANOS: i128 = 1_000_000_000;

impl Recurrence {
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let max = self.unit.max_every();
        if !(1..=max).contains(&self.every) {
            errors.push(FieldError::new(
                "every",
                "invalid_value",
                format!("must be between 1 and {max} for this unit"),
            ));
        }
        if self.end.is_some_and(|end| end <= self.start) {
            errors.push(FieldError::new(
                "end",
                "invalid_value",
                "must be after start",
            ));
        }
        let mut seen = 0u8;
        let duplicate = self.weekdays.iter().any(|&d| {
            let bit = day_bit(d.into());
            let again = seen & bit != 0;
            seen |= bit;
            again
        });
        if self.weekdays.is_empty() || duplicate {
            errors.push(FieldError::new(
                "weekdays",
                "invalid_value",
                "list each allowed weekday once, at least one",
            ));
        }
        if self.disabled_windows.len() > MAX_WINDOWS {
            errors.push(FieldError::new(
                "disabled_windows",
                "invalid_value",
                format!("at most {MAX_WINDOWS} windows"),
            ));
        }
        let whole_minute = |t: NaiveTime| t.second() == 0 && t.nanosecond() == 0;
        for (i, w) in self.disabled_windows.iter().enumerate() {
            if !whole_minute(w.from) {
                errors.push(FieldError::new(
                    format!("disabled_windows[{i}].from"),
                    "invalid_value",
                    "must be a time of day as HH:MM",
                ));
            }
            if !whole_minute(w.to) {
                errors.push(FieldError::new(
                    format!("disabled_windows[{i}].to"),
                    "invalid_value",
                    "must be a time of day as HH:MM",
                ));
            } else if w.to == w.from {
                errors.push(FieldError::new(
                    format!("disabled_windows[{i}].to"),
                    "invalid_value",
                    "must differ from `from`",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// First occurrence strictly after `after`, or None when the schedule has ended.
    pub fn next_after(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.unit {
            RepeatUnit::Minutes | RepeatUnit::Hours => self.next_absolute(tz, after),
            RepeatUnit::Days | RepeatUnit::Weeks | RepeatUnit::Months => self.next_wall(tz, after),
        }
    }

    /// Latest occurrence at or before `at` (None if none yet); used to run a
    /// missed occurrence once after downtime.
    pub fn latest_at_or_before(&self, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let at = self.end.map_or(at, |end| end.min(at));
        if at < self.start {
            return None;
        }
        match self.unit {
            RepeatUnit::Minutes | RepeatUnit::Hours => self.latest_absolute(tz, at),
            RepeatUnit::Days | RepeatUnit::Weeks | RepeatUnit::Months => self.latest_wall(tz, at),
        }
    }

    fn horizon(&self) -> TimeDelta {
        TimeDelta::days(match self.unit {
            RepeatUnit::Months => MONTHS_HORIZON_DAYS,
            _ => HORIZON_DAYS,
        })
    }

    fn period_nanos(&self) -> i128 {
        let unit = match self.unit {
            RepeatUnit::Hours => 3600,
            _ => 60,
        };
        i128::from(self.every.max(1)) * unit * NANOS
    }

    // Minutes and hours: candidates are found arithmetically; a filtered one
    // jumps to the end of whatever filtered it instead of stepping through
    // every candidate inside a window or a disabled day.
    fn next_absolute(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let filter = Filter::new(self);
        let period = self.period_nanos();
        let start = nanos(self.start);
        let after = nanos(after);
        let end = self.end.map(nanos);
        let mut k = if after < start {
            0
        } else {
            (after - start) / period + 1
        };
        let limit = start + k * period + nanos_of(self.horizon());
        loop {
            let t = start + k * period;
            if t > limit || end.is_some_and(|end| t > end) {
                return None;
            }
            let secs = floor_secs(t);
            let offset = offset_secs(tz, secs)?;
            let Some(until) = filter.blocked_until(local_at(t, offset)?) else {
                return from_nanos(t);
            };
            let mut resume = nanos_naive(until) - i128::from(offset) * NANOS;
            // The jump holds only while the offset does; a transition on the
            // way is where the filter must be looked at again.
            let last = floor_secs(resume - 1);
            if offset_secs(tz, last)? != offset {
                resume = i128::from(transition(tz, secs, last)?) * NANOS;
            }
            k = (resume - start + period - 1) / period;
        }
    }

    fn latest_absolute(&self, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let filter = Filter::new(self);
        let period = self.period_nanos();
        let start = nanos(self.start);
        let mut k = (nanos(at) - start) / period;
        let limit = start + k * period - nanos_of(self.horizon());
        loop {
            let t = start + k * period;
            if t < limit {
                return None;
            }
            let secs = floor_secs(t);
            let offset = offset_secs(tz, secs)?;
            let Some(since) = filter.blocked_since(local_at(t, offset)?) else {
                return from_nanos(t);
            };
            let mut resume = nanos_naive(since) - i128::from(offset) * NANOS;
            let first = floor_secs(resume);
            if offset_secs(tz, first)? != offset {
                resume = i128::from(transition(tz, first, secs)?) * NANOS;
            }
            if resume <= start {
                return None;
            }
            k = (resume - 1 - start) / period;
        }
    }

    // Days, weeks and months: occurrence k is computed from the start, so an
    // estimate of k from the local date is corrected by a step or two.
    fn next_wall(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let filter = Filter::new(self);
        let base = to_local(tz, self.start)?;
        let mut k = if after < self.start {
            0
        } else {
            self.index_near(base, to_local(tz, after)?)
        };
        let mut cur = self.occurrence(tz, base, k)?;
        if cur.0 > after {
            while k > 0 {
                let prev = self.occurrence(tz, base, k - 1)?;
                if prev.0 <= after {
                    break;
                }
                k -= 1;
                cur = prev;
            }
        } else {
            while cur.0 <= after {
                k += 1;
                cur = self.occurrence(tz, base, k)?;
            }
        }
        let limit = cur.0.checked_add_signed(self.horizon())?;
        loop {
            let (t, local) = cur;
            if t > limit || self.end.is_some_and(|end| t > end) {
                return None;
            }
            if filter.allows(local) {
                return Some(t);
            }
            k += 1;
            cur = self.occurrence(tz, base, k)?;
        }
    }

    fn latest_wall(&self, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let filter = Filter::new(self);
        let base = to_local(tz, self.start)?;
        let mut k = self.index_near(base, to_local(tz, at)?);
        let mut cur = self.occurrence(tz, base, k)?;
        if cur.0 <= at {
            while let Some(next) = self.occurrence(tz, base, k + 1).filter(|n| n.0 <= at) {
                k += 1;
                cur = next;
            }
        } else {
            while cur.0 > at && k > 0 {
                k -= 1;
                cur = self.occurrence(tz, base, k)?;
            }
        }
        let limit = cur
            .0
            .checked_sub_signed(self.horizon())
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        loop {
            let (t, local) = cur;
            if t < limit {
                return None;
            }
            if filter.allows(local) {
                return Some(t);
            }
            if k == 0 {
                return None;
            }
            k -= 1;
            cur = self.occurrence(tz, base, k)?;
        }
    }

    /// An index k whose occurrence is at most a step away from `local`.
    fn index_near(&self, base: NaiveDateTime, local: NaiveDateTime) -> u64 {
        let every = i64::from(self.every.max(1));
        let k = match self.unit {
            RepeatUnit::Months => {
                let months = |d: NaiveDate| i64::from(d.year()) * 12 + i64::from(d.month0());
                (months(local.date()) - months(base.date())).div_euclid(every)
            }
            unit => {
                let step = if unit == RepeatUnit::Weeks { 7 } else { 1 } * every;
                (local.date() - base.date()).num_days().div_euclid(step)
            }
        };
        k.max(0) as u64
    }

    /// Occurrence k of a wall-clock schedule and the local time it runs at.
    fn occurrence(
        &self,
        tz: Tz,
        base: NaiveDateTime,
        k: u64,
    ) -> Option<(DateTime<Utc>, NaiveDateTime)> {
        if k == 0 {
            // Start is the first occurrence even when it is the later of two
            // ambiguous instants.
            return Some((self.start, base));
        }
        let steps = k.checked_mul(u64::from(self.every))?;
        let date = match self.unit {
            RepeatUnit::Months => base
                .date()
                .checked_add_months(Months::new(u32::try_from(steps).ok()?))?,
            RepeatUnit::Weeks => base
                .date()
                .checked_add_days(Days::new(steps.checked_mul(7)?))?,
            _ => base.date().checked_add_days(Days::new(steps))?,
        };
        resolve(tz, date.and_time(base.time()))
    }
}

/// Converts a wall-clock time entered in `tz` into UTC: a time skipped by a
/// spring-forward gap moves forward by the gap's length, an ambiguous one
/// takes the earlier instant.
pub fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    resolve(tz, local).map_or_else(|| local.and_utc(), |(utc, _)| utc)
}

/// The instant of a wall time and the local time it actually shows.
fn resolve(tz: Tz, local: NaiveDateTime) -> Option<(DateTime<Utc>, NaiveDateTime)> {
    let offset = match tz.offset_from_local_datetime(&local) {
        LocalResult::Single(offset) => offset.fix(),
        // The larger offset gives the earlier instant.
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.fix(), b.fix());
            if a.local_minus_utc() >= b.local_minus_utc() {
                a
            } else {
                b
            }
        }
        LocalResult::None => {
            // Reading the wall time with the offset in force before the gap
            // lands after the gap, shifted by its length.
            let before = local.checked_sub_signed(TimeDelta::days(1))?;
            let offset = tz.offset_from_utc_datetime(&before).fix();
            let utc = local.checked_sub_offset(offset)?;
            let shown = utc.checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())?;
            return Some((utc.and_utc(), shown));
        }
    };
    Some((local.checked_sub_offset(offset)?.and_utc(), local))
}

fn to_local(tz: Tz, t: DateTime<Utc>) -> Option<NaiveDateTime> {
    let utc = t.naive_utc();
    utc.checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())
}

fn nanos(t: DateTime<Utc>) -> i128 {
    i128::from(t.timestamp()) * NANOS + i128::from(t.timestamp_subsec_nanos())
}

fn nanos_naive(t: NaiveDateTime) -> i128 {
    nanos(t.and_utc())
}

fn nanos_of(d: TimeDelta) -> i128 {
    i128::from(d.num_seconds()) * NANOS
}

fn floor_secs(n: i128) -> i64 {
    n.div_euclid(NANOS).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

fn from_nanos(n: i128) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(floor_secs(n), n.rem_euclid(NANOS) as u32)
}

fn local_at(t: i128, offset: i32) -> Option<NaiveDateTime> {
    from_nanos(t + i128::from(offset) * NANOS).map(|d| d.naive_utc())
}

/// UTC offset in seconds at a Unix time.
fn offset_secs(tz: Tz, secs: i64) -> Option<i32> {
    let utc = DateTime::from_timestamp(secs, 0)?.naive_utc();
    Some(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc())
}

/// The first second in `(lo, hi]` whose offset differs from `lo`'s, given
/// that `hi`'s does (tz transitions fall on whole seconds).
fn transition(tz: Tz, mut lo: i64, mut hi: i64) -> Option<i64> {
    let offset = offset_secs(tz, lo)?;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_secs(tz, mid)? == offset {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

fn day_bit(day: Weekday) -> u8 {
    1 << day.num_days_from_monday()
}

/// The weekday and window rules, applied to local times.
struct Filter<'a> {
    days: u8,
    windows: &'a [DisabledWindow],
}

impl<'a> Filter<'a> {
    fn new(r: &'a Recurrence) -> Self {
        Self {
            days: r.weekdays.iter().fold(0, |m, &d| m | day_bit(d.into())),
            windows: &r.disabled_windows,
        }
    }

    fn day_ok(&self, date: NaiveDate) -> bool {
        self.days & day_bit(date.weekday()) != 0
    }

    fn allows(&self, local: NaiveDateTime) -> bool {
        self.day_ok(local.date()) && self.windows.iter().all(|w| covering(w, local).is_none())
    }

    /// When `local` is filtered: a later local time before which every local
    /// time is filtered too. Adjacent blocks are joined (up to a week) so
    /// that filters rejecting most of the time cost few searches.
    fn blocked_until(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut until = self.block_end(local)?;
        let cap = local.checked_add_days(Days::new(7))?;
        while until < cap {
            let Some(next) = self.block_end(until) else {
                break;
            };
            until = next;
        }
        Some(until)
    }

    /// When `local` is filtered: an earlier local time from which every local
    /// time up to `local` is filtered too; joined like [`Self::blocked_until`].
    fn blocked_since(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut since = self.block_start(local)?;
        let cap = local.checked_sub_days(Days::new(7))?;
        while since > cap {
            // The instant just before the block.
            let Some(prev) = since
                .checked_sub_signed(TimeDelta::nanoseconds(1))
                .and_then(|before| self.block_start(before))
            else {
                break;
            };
            since = prev;
        }
        Some(since)
    }

    fn block_end(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        if !self.day_ok(local.date()) {
            let mut date = local.date().succ_opt()?;
            for _ in 0..6 {
                if self.day_ok(date) {
                    break;
                }
                date = date.succ_opt()?;
            }
            return Some(date.and_time(NaiveTime::MIN));
        }
        self.windows
            .iter()
            .filter_map(|w| covering(w, local))
            .map(|(_, to)| to)
            .max()
    }

    fn block_start(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        if !self.day_ok(local.date()) {
            let mut date = local.date();
            for _ in 0..6 {
                let prev = date.pred_opt()?;
                if self.day_ok(prev) {
                    break;
                }
                date = prev;
            }
            return Some(date.and_time(NaiveTime::MIN));
        }
        self.windows
            .iter()
            .filter_map(|w| covering(w, local))
            .map(|(from, _)| from)
            .min()
    }
}

/// The span of `w` that covers `local`, if one does.
fn covering(w: &DisabledWindow, local: NaiveDateTime) -> Option<(NaiveDateTime, NaiveDateTime)> {
    let date = local.date();
    let time = local.time();
    let on = |d: NaiveDate| w.day.is_none_or(|day| Weekday::from(day) == d.weekday());
    if w.from < w.to {
        (on(date) && w.from <= time && time < w.to)
            .then(|| (date.and_time(w.from), date.and_time(w.to)))
    } else if time >= w.from {
        let next = date.succ_opt()?;
        on(date).then(|| (date.and_time(w.from), next.and_time(w.to)))
    } else if time < w.to {
        let prev = date.pred_opt()?;
        on(prev).then(|| (prev.and_time(w.from), date.and_time(w.to)))
    } else {
        None
    }
}

mod hh_mm {
    use chrono::NaiveTime;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&time.format("%H:%M"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let s = String::deserialize(d)?;
        NaiveTime::parse_from_str(&s, "%H:%M")
            .map_err(|_| D::Error::custom("expected a time of day as HH:MM"))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Schedule {
    pub state: Option<ScheduleState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub owner_id: UserId,
    pub name: String,
    pub description: String,
    pub recurrence: Recurrence,
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleCommand {
    Create {
        id: Uuid,
        tenant_id: TenantId,
        owner_id: UserId,
        name: String,
        description: String,
        recurrence: Recurrence,
    },
    Update {
        name: Option<String>,
        description: Option<String>,
        recurrence: Option<Recurrence>,
    },
    Remove,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScheduleEvent {
    ScheduleCreated {
        id: Uuid,
        tenant_id: TenantId,
        owner_id: UserId,
        name: String,
        description: String,
        recurrence: Recurrence,
    },
    ScheduleUpdated {
        name: String,
        description: String,
        recurrence: Recurrence,
    },
    ScheduleRemoved,
}

impl DomainEvent for ScheduleEvent {
    fn event_type(&self) -> String {
        match self {
            ScheduleEvent::ScheduleCreated { .. } => "ScheduleCreated",
            ScheduleEvent::ScheduleUpdated { .. } => "ScheduleUpdated",
            ScheduleEvent::ScheduleRemoved => "ScheduleRemoved",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

impl ScheduleEvent {
    pub fn describe(&self, name: &str) -> String {
        match self {
            ScheduleEvent::ScheduleCreated { .. } => format!("Created schedule {name}"),
            ScheduleEvent::ScheduleUpdated { .. } => format!("Updated schedule {name}"),
            ScheduleEvent::ScheduleRemoved => format!("Removed schedule {name}"),
        }
    }
}

const MAX_DESCRIPTION: usize = 1000;

/// Checks a schedule's fields; returns the name trimmed.
fn validate(name: &str, description: &str, recurrence: &Recurrence) -> Result<String, DomainError> {
    let mut errors = Vec::new();
    let name = name.trim();
    if !(1..=100).contains(&name.chars().count()) {
        errors.push(FieldError::new(
            "name",
            "invalid_value",
            "must be 1-100 characters",
        ));
    }
    if description.chars().count() > MAX_DESCRIPTION {
        errors.push(FieldError::new(
            "description",
            "invalid_value",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
    if let Err(e) = recurrence.validate() {
        errors.extend(e);
    }
    if errors.is_empty() {
        Ok(name.to_string())
    } else {
        Err(DomainError::Invalid(errors))
    }
}

impl Schedule {
    fn live(&self) -> Result<&ScheduleState, DomainError> {
        match &self.state {
            Some(s) if !s.removed => Ok(s),
            _ => Err(DomainError::NotFound("schedule")),
        }
    }
}

impl Aggregate for Schedule {
    const TYPE: &'static str = "schedule";
    type Command = ScheduleCommand;
    type Event = ScheduleEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ScheduleCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), DomainError> {
        let event = match command {
            ScheduleCommand::Create {
                id,
                tenant_id,
                owner_id,
                name,
                description,
                recurrence,
            } => {
                if self.state.is_some() {
                    return Err(DomainError::conflict(
                        "schedule_exists",
                        "this schedule already exists",
                    ));
                }
                let name = validate(&name, &description, &recurrence)?;
                ScheduleEvent::ScheduleCreated {
                    id,
                    tenant_id,
                    owner_id,
                    name,
                    description,
                    recurrence,
                }
            }
            ScheduleCommand::Update {
                name,
                description,
                recurrence,
            } => {
                let state = self.live()?;
                let name = name.unwrap_or_else(|| state.name.clone());
                let description = description.unwrap_or_else(|| state.description.clone());
                let recurrence = recurrence.unwrap_or_else(|| state.recurrence.clone());
                let name = validate(&name, &description, &recurrence)?;
                if name == state.name
                    && description == state.description
                    && recurrence == state.recurrence
                {
                    return Ok(());
                }
                ScheduleEvent::ScheduleUpdated {
                    name,
                    description,
                    recurrence,
                }
            }
            ScheduleCommand::Remove => {
                self.live()?;
                ScheduleEvent::ScheduleRemoved
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ScheduleEvent) {
        match event {
            ScheduleEvent::ScheduleCreated {
                id,
                tenant_id,
                owner_id,
                name,
                description,
                recurrence,
            } => {
                self.state = Some(ScheduleState {
                    id,
                    tenant_id,
                    owner_id,
                    name,
                    description,
                    recurrence,
                    removed: false,
                })
            }
            ScheduleEvent::ScheduleUpdated {
                name,
                description,
                recurrence,
            } => {
                if let Some(s) = &mut self.state {
                    s.name = name;
                    s.description = description;
                    s.recurrence = recurrence;
                }
            }
            ScheduleEvent::ScheduleRemoved => {
                if let Some(s) = &mut self.state {
                    s.removed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use chrono_tz::{America::New_York, Australia::Lord_Howe, Europe::London, UTC};
    use cqrs_es::test::TestFramework;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn wall(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn hm(s: &str) -> NaiveTime {
        NaiveTime::parse_from_str(s, "%H:%M").unwrap()
    }

    fn every(n: u32, unit: RepeatUnit, start: DateTime<Utc>) -> Recurrence {
        Recurrence {
            start,
            end: None,
            every: n,
            unit,
            weekdays: Day::ALL.to_vec(),
            disabled_windows: vec![],
        }
    }

    /// The first `n` occurrences after `after`.
    fn run(r: &Recurrence, tz: Tz, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(r.next_after(tz, after), |&t| r.next_after(tz, t))
            .take(n)
            .collect()
    }

    #[test]
    fn wall_times_in_gaps_move_forward_and_ambiguous_ones_take_the_earlier_instant() {
        // New York springs forward 02:00 -> 03:00 on 9 March 2025.
        assert_eq!(
            local_to_utc(New_York, wall("2025-03-09 02:30")),
            utc("2025-03-09T07:30:00Z")
        );
        // ... and falls back 02:00 -> 01:00 on 2 November 2025.
        assert_eq!(
            local_to_utc(New_York, wall("2025-11-02 01:30")),
            utc("2025-11-02T05:30:00Z")
        );
        // Lord Howe moves 30 minutes: 02:00 -> 02:30 on 5 October 2025 (+10:30 -> +11).
        assert_eq!(
            local_to_utc(Lord_Howe, wall("2025-10-05 02:15")),
            utc("2025-10-04T15:45:00Z")
        );
        assert_eq!(
            local_to_utc(London, wall("2025-07-01 12:00")),
            utc("2025-07-01T11:00:00Z")
        );
    }

    #[test]
    fn a_window_across_midnight_skips_monday_evening_and_tuesday_morning() {
        // 6 January 2025 is a Monday.
        let r = Recurrence {
            disabled_windows: vec![DisabledWindow {
                day: Some(Day::Mon),
                from: hm("17:00"),
                to: hm("08:00"),
            }],
            ..every(1, RepeatUnit::Hours, utc("2025-01-06T00:00:00Z"))
        };
        assert_eq!(
            run(&r, UTC, utc("2025-01-06T15:30:00Z"), 2),
            [utc("2025-01-06T16:00:00Z"), utc("2025-01-07T08:00:00Z")]
        );
        // Tuesday evening is not covered.
        assert_eq!(
            r.next_after(UTC, utc("2025-01-07T17:30:00Z")),
            Some(utc("2025-01-07T18:00:00Z"))
        );
        assert_eq!(
            r.latest_at_or_before(UTC, utc("2025-01-07T07:59:00Z")),
            Some(utc("2025-01-06T16:00:00Z"))
        );
    }

    #[test]
    fn monthly_on_the_31st_uses_the_last_day_of_shorter_months() {
        let r = every(1, RepeatUnit::Months, utc("2024-01-31T10:00:00Z"));
        assert_eq!(
            run(&r, UTC, r.start, 5),
            [
                utc("2024-02-29T10:00:00Z"),
                utc("2024-03-31T10:00:00Z"),
                utc("2024-04-30T10:00:00Z"),
                utc("2024-05-31T10:00:00Z"),
                utc("2024-06-30T10:00:00Z"),
            ]
        );
        assert_eq!(
            r.next_after(UTC, utc("2025-02-01T00:00:00Z")),
            Some(utc("2025-02-28T10:00:00Z"))
        );
    }

    #[test]
    fn daily_0230_runs_at_0330_on_the_spring_forward_day() {
        let start = local_to_utc(New_York, wall("2025-03-07 02:30"));
        let r = every(1, RepeatUnit::Days, start);
        assert_eq!(
            run(&r, New_York, start, 3),
            [
                local_to_utc(New_York, wall("2025-03-08 02:30")),
                utc("2025-03-09T07:30:00Z"), // 03:30 EDT
                utc("2025-03-10T06:30:00Z"), // 02:30 EDT
            ]
        );
    }

    #[test]
    fn daily_0130_runs_once_on_the_fall_back_day() {
        let start = local_to_utc(New_York, wall("2025-11-01 01:30"));
        let r = every(1, RepeatUnit::Days, start);
        assert_eq!(
            run(&r, New_York, start, 2),
            [
                utc("2025-11-02T05:30:00Z"), // 01:30 EDT
                utc("2025-11-03T06:30:00Z"), // 01:30 EST, a day later
            ]
        );
        assert_eq!(
            r.latest_at_or_before(New_York, utc("2025-11-02T06:45:00Z")),
            Some(utc("2025-11-02T05:30:00Z"))
        );
    }

    #[test]
    fn hourly_runs_stay_sixty_real_minutes_apart_across_dst() {
        for (tz, start) in [
            (New_York, "2025-03-09T04:00:00Z"),
            (New_York, "2025-11-02T03:00:00Z"),
            (Lord_Howe, "2025-10-04T13:00:00Z"),
        ] {
            let r = every(1, RepeatUnit::Hours, utc(start));
            let runs = run(&r, tz, r.start, 6);
            for (i, t) in runs.iter().enumerate() {
                assert_eq!(*t, r.start + TimeDelta::hours(i as i64 + 1), "{tz}");
            }
        }
    }

    #[test]
    fn windows_are_local_times_on_both_sides_of_a_dst_change() {
        // Every minute, never between 01:00 and 02:30 or 03:15 and 04:00
        // local; New York skips 02:00-03:00 at 07:00 UTC on 9 March 2025.
        let windows = vec![
            DisabledWindow {
                day: None,
                from: hm("01:00"),
                to: hm("02:30"),
            },
            DisabledWindow {
                day: None,
                from: hm("03:15"),
                to: hm("04:00"),
            },
        ];
        let r = Recurrence {
            disabled_windows: windows,
            ..every(1, RepeatUnit::Minutes, utc("2025-03-01T00:00:00Z"))
        };
        // 01:30 EST is blocked until the clock shows 03:00 EDT.
        assert_eq!(
            r.next_after(New_York, utc("2025-03-09T06:30:00Z")),
            Some(utc("2025-03-09T07:00:00Z"))
        );
        // 03:40 EDT is blocked back to 03:15 EDT; 03:14 EDT runs.
        assert_eq!(
            r.latest_at_or_before(New_York, utc("2025-03-09T07:40:00Z")),
            Some(utc("2025-03-09T07:14:00Z"))
        );
        let r = Recurrence {
            disabled_windows: vec![DisabledWindow {
                day: None,
                from: hm("02:30"),
                to: hm("04:00"),
            }],
            ..r
        };
        // 03:40 EDT is blocked back to the change; 01:59 EST runs.
        assert_eq!(
            r.latest_at_or_before(New_York, utc("2025-03-09T07:40:00Z")),
            Some(utc("2025-03-09T06:59:00Z"))
        );
    }

    #[test]
    fn a_start_at_the_later_of_two_ambiguous_times_is_the_first_occurrence() {
        // 06:30 UTC on 2 November 2025 is the second 01:30 in New York.
        let r = every(1, RepeatUnit::Days, utc("2025-11-02T06:30:00Z"));
        assert_eq!(
            r.next_after(New_York, utc("2025-11-02T05:00:00Z")),
            Some(r.start)
        );
        assert_eq!(r.latest_at_or_before(New_York, r.start), Some(r.start));
        assert_eq!(
            r.latest_at_or_before(New_York, utc("2025-11-02T06:29:00Z")),
            None
        );
    }

    #[test]
    fn end_is_inclusive() {
        let r = Recurrence {
            end: Some(utc("2025-01-03T09:00:00Z")),
            ..every(1, RepeatUnit::Days, utc("2025-01-01T09:00:00Z"))
        };
        assert_eq!(
            r.next_after(UTC, utc("2025-01-02T09:00:00Z")),
            Some(utc("2025-01-03T09:00:00Z"))
        );
        assert_eq!(r.next_after(UTC, utc("2025-01-03T09:00:00Z")), None);
        assert_eq!(
            r.latest_at_or_before(UTC, utc("2025-02-01T00:00:00Z")),
            Some(utc("2025-01-03T09:00:00Z"))
        );
        assert_eq!(
            r.latest_at_or_before(UTC, utc("2025-01-01T08:59:00Z")),
            None
        );
    }

    #[test]
    fn only_listed_weekdays_run() {
        // 3 January 2025 is a Friday.
        let r = Recurrence {
            weekdays: vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
            ..every(1, RepeatUnit::Days, utc("2025-01-03T22:00:00Z"))
        };
        assert_eq!(
            r.next_after(UTC, r.start),
            Some(utc("2025-01-06T22:00:00Z"))
        );
        assert_eq!(
            r.latest_at_or_before(UTC, utc("2025-01-05T23:00:00Z")),
            Some(utc("2025-01-03T22:00:00Z"))
        );
        // The weekday is the tenant's: 22:00 UTC on Friday is 03:30 on
        // Saturday in Kolkata.
        assert_eq!(
            r.next_after(chrono_tz::Asia::Kolkata, utc("2025-01-02T23:00:00Z")),
            Some(utc("2025-01-05T22:00:00Z"))
        );
        // Weekly runs keep start's weekday, so a mask without it never runs.
        let weekly = Recurrence {
            weekdays: vec![Day::Mon],
            ..every(1, RepeatUnit::Weeks, utc("2025-01-03T22:00:00Z"))
        };
        assert_eq!(weekly.next_after(UTC, weekly.start), None);
    }

    #[test]
    fn filters_that_reject_everything_end_the_schedule() {
        let r = Recurrence {
            disabled_windows: vec![
                DisabledWindow {
                    day: None,
                    from: hm("00:00"),
                    to: hm("12:00"),
                },
                DisabledWindow {
                    day: None,
                    from: hm("11:00"),
                    to: hm("00:00"),
                },
            ],
            ..every(1, RepeatUnit::Minutes, utc("2025-01-01T00:00:00Z"))
        };
        assert_eq!(r.next_after(London, r.start), None);
        assert_eq!(
            r.latest_at_or_before(London, utc("2025-06-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let r = Recurrence {
            start: utc("2025-01-01T00:00:00Z"),
            end: Some(utc("2024-12-31T00:00:00Z")),
            every: 10081,
            unit: RepeatUnit::Minutes,
            weekdays: vec![Day::Mon, Day::Mon],
            disabled_windows: vec![
                DisabledWindow {
                    day: None,
                    from: hm("22:00"),
                    to: hm("06:00"),
                },
                DisabledWindow {
                    day: Some(Day::Sun),
                    from: hm("08:00"),
                    to: hm("08:00"),
                },
            ],
        };
        let fields: Vec<_> = r
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["every", "end", "weekdays", "disabled_windows[1].to"]
        );
        let ok = every(1, RepeatUnit::Days, r.start);
        assert_eq!(ok.validate(), Ok(()));
        let none = Recurrence {
            weekdays: vec![],
            every: 0,
            ..ok
        };
        let fields: Vec<_> = none
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["every", "weekdays"]);
    }

    #[test]
    fn json_shape() {
        let r = Recurrence {
            disabled_windows: vec![DisabledWindow {
                day: Some(Day::Mon),
                from: hm("17:00"),
                to: hm("08:00"),
            }],
            ..every(2, RepeatUnit::Hours, utc("2025-01-06T00:00:00Z"))
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "start": "2025-01-06T00:00:00Z",
                "end": null,
                "every": 2,
                "unit": "hours",
                "weekdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "disabled_windows": [{"day": "mon", "from": "17:00", "to": "08:00"}],
            })
        );
        assert_eq!(serde_json::from_value::<Recurrence>(json).unwrap(), r);
        let bad = serde_json::json!({"day": null, "from": "25:00", "to": "08:00"});
        assert!(serde_json::from_value::<DisabledWindow>(bad).is_err());
    }

    fn create(name: &str) -> ScheduleCommand {
        ScheduleCommand::Create {
            id: Uuid::from_u128(5),
            tenant_id: TenantId(Uuid::from_u128(1)),
            owner_id: UserId(Uuid::from_u128(2)),
            name: name.into(),
            description: "".into(),
            recurrence: every(1, RepeatUnit::Days, utc("2025-01-01T03:00:00Z")),
        }
    }

    fn created() -> ScheduleEvent {
        ScheduleEvent::ScheduleCreated {
            id: Uuid::from_u128(5),
            tenant_id: TenantId(Uuid::from_u128(1)),
            owner_id: UserId(Uuid::from_u128(2)),
            name: "nightly".into(),
            description: "".into(),
            recurrence: every(1, RepeatUnit::Days, utc("2025-01-01T03:00:00Z")),
        }
    }

    #[test]
    fn create_trims_the_name() {
        TestFramework::<Schedule>::with(())
            .given_no_previous_events()
            .when(create("  nightly "))
            .then_expect_events(vec![created()]);
        TestFramework::<Schedule>::with(())
            .given(vec![created()])
            .when(create("nightly"))
            .then_expect_error(DomainError::conflict(
                "schedule_exists",
                "this schedule already exists",
            ));
    }

    #[test]
    fn invalid_fields_are_named() {
        let ScheduleCommand::Create { recurrence, .. } = create("x") else {
            unreachable!()
        };
        let result = TestFramework::<Schedule>::with(())
            .given_no_previous_events()
            .when(ScheduleCommand::Create {
                id: Uuid::from_u128(5),
                tenant_id: TenantId(Uuid::from_u128(1)),
                owner_id: UserId(Uuid::from_u128(2)),
                name: "   ".into(),
                description: "x".repeat(1001),
                recurrence: Recurrence {
                    every: 0,
                    ..recurrence
                },
            })
            .inspect_result();
        let Err(DomainError::Invalid(errors)) = result else {
            panic!("expected invalid")
        };
        let fields: Vec<_> = errors.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["name", "description", "every"]);
    }

    #[test]
    fn update_records_the_full_new_values_and_ignores_no_ops() {
        let weekly = every(1, RepeatUnit::Weeks, utc("2025-01-01T03:00:00Z"));
        TestFramework::<Schedule>::with(())
            .given(vec![created()])
            .when(ScheduleCommand::Update {
                name: None,
                description: Some("weekly full".into()),
                recurrence: Some(weekly.clone()),
            })
            .then_expect_events(vec![ScheduleEvent::ScheduleUpdated {
                name: "nightly".into(),
                description: "weekly full".into(),
                recurrence: weekly,
            }]);
        TestFramework::<Schedule>::with(())
            .given(vec![created()])
            .when(ScheduleCommand::Update {
                name: Some("nightly".into()),
                description: None,
                recurrence: None,
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn remove_and_missing_schedules() {
        TestFramework::<Schedule>::with(())
            .given(vec![created()])
            .when(ScheduleCommand::Remove)
            .then_expect_events(vec![ScheduleEvent::ScheduleRemoved]);
        TestFramework::<Schedule>::with(())
            .given(vec![created(), ScheduleEvent::ScheduleRemoved])
            .when(ScheduleCommand::Remove)
            .then_expect_error(DomainError::NotFound("schedule"));
        TestFramework::<Schedule>::with(())
            .given_no_previous_events()
            .when(ScheduleCommand::Update {
                name: Some("x".into()),
                description: None,
                recurrence: None,
            })
            .then_expect_error(DomainError::NotFound("schedule"));
        assert_eq!(
            ScheduleEvent::ScheduleRemoved.describe("nightly"),
            "Removed schedule nightly"
        );
    }

    /// A reference straight from the definitions: candidates come from
    /// walking minutes (absolute units) or local dates (wall-clock units),
    /// and the filters are checked span by span.
    mod reference {
        use super::*;

        fn local(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
            t.with_timezone(&tz).naive_local()
        }

        fn filtered(r: &Recurrence, local: NaiveDateTime) -> bool {
            let day = Day::from(local.date().weekday());
            if !r.weekdays.contains(&day) {
                return true;
            }
            r.disabled_windows.iter().any(|w| {
                [local.date().pred_opt().unwrap(), local.date()]
                    .into_iter()
                    .filter(|d| w.day.is_none() || w.day == Some(Day::from(d.weekday())))
                    .any(|d| {
                        let from = d.and_time(w.from);
                        let to = if w.to > w.from {
                            d.and_time(w.to)
                        } else {
                            d.succ_opt().unwrap().and_time(w.to)
                        };
                        from <= local && local < to
                    })
            })
        }

        fn last_day(d: NaiveDate) -> u32 {
            (28..=31)
                .rev()
                .find(|&n| NaiveDate::from_ymd_opt(d.year(), d.month(), n).is_some())
                .unwrap()
        }

        fn is_run_date(r: &Recurrence, first: NaiveDate, d: NaiveDate) -> bool {
            let n = i64::from(r.every);
            match r.unit {
                RepeatUnit::Days => (d - first).num_days() % n == 0,
                RepeatUnit::Weeks => (d - first).num_days() % (7 * n) == 0,
                RepeatUnit::Months => {
                    let months =
                        (d.year() - first.year()) * 12 + d.month() as i32 - first.month() as i32;
                    months % r.every as i32 == 0 && d.day() == first.day().min(last_day(d))
                }
                _ => unreachable!(),
            }
        }

        /// Unfiltered occurrences in [lo, hi], in order.
        fn candidates(
            r: &Recurrence,
            tz: Tz,
            lo: DateTime<Utc>,
            hi: DateTime<Utc>,
        ) -> Vec<DateTime<Utc>> {
            let lo = lo.max(r.start);
            let hi = r.end.map_or(hi, |e| e.min(hi));
            let mut out = Vec::new();
            match r.unit {
                RepeatUnit::Minutes | RepeatUnit::Hours => {
                    let period = i64::from(r.every)
                        * if r.unit == RepeatUnit::Hours {
                            3600
                        } else {
                            60
                        };
                    let mut t = lo.with_second(0).unwrap().with_nanosecond(0).unwrap();
                    while t <= hi {
                        if t >= lo && (t - r.start).num_seconds() % period == 0 {
                            out.push(t);
                        }
                        t += TimeDelta::minutes(1);
                    }
                }
                _ => {
                    let first = local(tz, r.start);
                    let mut d = local(tz, lo).date() - TimeDelta::days(2);
                    while d <= local(tz, hi).date() + TimeDelta::days(2) {
                        if d >= first.date() && is_run_date(r, first.date(), d) {
                            let t = if d == first.date() {
                                r.start
                            } else {
                                local_to_utc(tz, d.and_time(first.time()))
                            };
                            if lo <= t && t <= hi {
                                out.push(t);
                            }
                        }
                        d = d.succ_opt().unwrap();
                    }
                }
            }
            out
        }

        pub fn horizon(r: &Recurrence) -> TimeDelta {
            TimeDelta::days(if r.unit == RepeatUnit::Months {
                3 * 366
            } else {
                40
            })
        }

        pub fn next_after(r: &Recurrence, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
            candidates(r, tz, after, after + horizon(r))
                .into_iter()
                .find(|&t| t > after && !filtered(r, local(tz, t)))
        }

        pub fn latest_at_or_before(
            r: &Recurrence,
            tz: Tz,
            at: DateTime<Utc>,
        ) -> Option<DateTime<Utc>> {
            candidates(r, tz, at - horizon(r), at)
                .into_iter()
                .rev()
                .find(|&t| !filtered(r, local(tz, t)))
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const ZONES: [Tz; 5] = [UTC, London, New_York, Lord_Howe, chrono_tz::Asia::Kolkata];

        /// Local dates around DST changes in the zones above.
        const TRANSITIONS: [(i32, u32, u32); 6] = [
            (2025, 3, 9),
            (2025, 11, 2),
            (2025, 3, 30),
            (2025, 10, 26),
            (2025, 4, 6),
            (2025, 10, 5),
        ];

        fn unit_and_every() -> impl Strategy<Value = (RepeatUnit, u32)> {
            prop_oneof![
                prop_oneof![
                    1..=3u32,
                    Just(15),
                    Just(45),
                    Just(90),
                    Just(1440),
                    Just(10080)
                ]
                .prop_map(|n| (RepeatUnit::Minutes, n)),
                (1..=30u32).prop_map(|n| (RepeatUnit::Hours, n)),
                (1..=3u32).prop_map(|n| (RepeatUnit::Days, n)),
                (1..=3u32).prop_map(|n| (RepeatUnit::Weeks, n)),
                (1..=4u32).prop_map(|n| (RepeatUnit::Months, n)),
            ]
        }

        fn start_date() -> impl Strategy<Value = NaiveDate> {
            let base = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
            prop_oneof![
                (0..1100u64).prop_map(move |n| base + Days::new(n)),
                (0..TRANSITIONS.len(), 0..4u64).prop_map(|(i, back)| {
                    let (y, m, d) = TRANSITIONS[i];
                    NaiveDate::from_ymd_opt(y, m, d).unwrap() - Days::new(back)
                }),
                (2024..2027i32, 1..=12u32, 28..=31u32).prop_map(|(y, m, d)| {
                    (28..=d)
                        .rev()
                        .find_map(|d| NaiveDate::from_ymd_opt(y, m, d))
                        .unwrap()
                }),
            ]
        }

        fn start_time() -> impl Strategy<Value = NaiveTime> {
            prop_oneof![0..1440u32, 0..240u32, (0..96u32).prop_map(|q| q * 15)]
                .prop_map(|m| NaiveTime::from_hms_opt(m / 60, m % 60, 0).unwrap())
        }

        fn quarter_hour() -> impl Strategy<Value = NaiveTime> {
            (0..96u32).prop_map(|q| NaiveTime::from_hms_opt(q / 4, q % 4 * 15, 0).unwrap())
        }

        fn window() -> impl Strategy<Value = DisabledWindow> {
            (
                prop::option::weighted(0.7, 0..7usize),
                quarter_hour(),
                quarter_hour(),
            )
                .prop_filter("from != to", |(_, from, to)| from != to)
                .prop_map(|(day, from, to)| DisabledWindow {
                    day: day.map(|d| Day::ALL[d]),
                    from,
                    to,
                })
        }

        /// DST changes (UTC) of each zone in `ZONES`, to place starts and
        /// searches next to.
        fn changes(tz: Tz) -> &'static [&'static str] {
            match tz.name() {
                "America/New_York" => &["2025-03-09T07:00:00Z", "2025-11-02T06:00:00Z"],
                "Europe/London" => &["2025-03-30T01:00:00Z", "2025-10-26T01:00:00Z"],
                "Australia/Lord_Howe" => &["2025-04-05T15:00:00Z", "2025-10-04T15:30:00Z"],
                _ => &["2025-06-01T00:00:00Z"],
            }
        }

        prop_compose! {
            fn case()(
                tz in 0..ZONES.len(),
                (unit, every) in unit_and_every(),
                date in start_date(),
                time in start_time(),
                start_near_change in prop::option::weighted(0.2, (0..2usize, -360..360i64)),
                mask in prop_oneof![Just(127u8), 1..128u8],
                windows in prop::collection::vec(window(), 0..3),
                end in prop::option::weighted(0.3, 1..200 * 1440i64),
                after in prop_oneof![
                    (-3 * 1440..60 * 1440i64).prop_map(|m| (None, m)),
                    (-1440..2 * 1440i64).prop_map(|m| (None, m)),
                    (0..2usize, -1440..1440i64).prop_map(|(i, m)| (Some(i), m)),
                ],
                after_secs in prop_oneof![Just(0i64), 0..60i64],
            ) -> (Tz, Recurrence, DateTime<Utc>) {
                let tz = ZONES[tz];
                let change = |i: usize| utc(changes(tz)[i % changes(tz).len()]);
                // A start next to a change can be the later of two ambiguous
                // instants, which local_to_utc never returns.
                let start = match start_near_change {
                    Some((i, m)) => change(i) + TimeDelta::minutes(m),
                    None => local_to_utc(tz, date.and_time(time)),
                };
                let r = Recurrence {
                    start,
                    end: end.map(|m| start + TimeDelta::minutes(m)),
                    every,
                    unit,
                    weekdays: Day::ALL
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << i) != 0)
                        .map(|(_, d)| d)
                        .collect(),
                    disabled_windows: windows,
                };
                let (near, minutes) = after;
                let base = near.map_or(start, change);
                let after = base + TimeDelta::minutes(minutes) + TimeDelta::seconds(after_secs);
                (tz, r, after)
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn searches_agree_with_the_definition((tz, r, at) in case()) {
                prop_assert_eq!(r.validate(), Ok(()));
                let horizon = reference::horizon(&r);

                let fast = r.next_after(tz, at);
                match reference::next_after(&r, tz, at) {
                    Some(t) => prop_assert_eq!(fast, Some(t)),
                    None => prop_assert!(
                        fast.is_none_or(|t| t > at + horizon),
                        "next_after found {:?} which the reference missed", fast
                    ),
                }

                let fast = r.latest_at_or_before(tz, at);
                match reference::latest_at_or_before(&r, tz, at) {
                    Some(t) => prop_assert_eq!(fast, Some(t)),
                    None => prop_assert!(
                        fast.is_none_or(|t| t < at - horizon),
                        "latest_at_or_before found {:?} which the reference missed", fast
                    ),
                }
            }
        }
    }
}
