//! When an organisation's daily cleanup runs: once a day at its cleanup time
//! (HH:MM on the organisation's wall clock).
//!
//! Each local day has one cleanup instant. A cleanup time skipped by a
//! spring-forward gap runs shifted by the gap's length (02:30 in a
//! 02:00→03:00 gap runs at 03:30) and an ambiguous one (fall-back) runs
//! once, at the earlier instant — the rule schedules follow
//! ([`crate::schedule::local_to_utc`]). A day is identified by its local
//! date, so a run is claimed once per organisation and day, and after
//! downtime only the latest missed day runs.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;

use crate::schedule::local_to_utc;

/// One day's cleanup: its local date and the instant it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupDue {
    pub day: NaiveDate,
    pub at: DateTime<Utc>,
}

/// The daily cleanup time of an organisation, in its time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupClock {
    pub tz: Tz,
    pub time: NaiveTime,
}

impl CleanupClock {
    /// From the settings' time zone and HH:MM; `None` when either is invalid.
    pub fn parse(time_zone: &str, cleanup_time: &str) -> Option<Self> {
        Some(Self {
            tz: time_zone.parse().ok()?,
            time: NaiveTime::parse_from_str(cleanup_time, "%H:%M").ok()?,
        })
    }

    /// The cleanup of local day `day`.
    pub fn on(&self, day: NaiveDate) -> CleanupDue {
        CleanupDue {
            day,
            at: local_to_utc(self.tz, day.and_time(self.time)),
        }
    }

    /// Local days around `t` whose cleanup may be the one just before or
    /// after it (a shifted time can cross midnight; offsets stay within a day).
    fn days_around(&self, t: DateTime<Utc>) -> impl Iterator<Item = CleanupDue> + '_ {
        let today = t.with_timezone(&self.tz).date_naive();
        (0..5u64).filter_map(move |i| {
            let day = today.checked_sub_days(Days::new(2))?;
            day.checked_add_days(Days::new(i)).map(|d| self.on(d))
        })
    }

    /// The latest cleanup due at or before `now`: the one to run (once) now.
    pub fn latest_at_or_before(&self, now: DateTime<Utc>) -> CleanupDue {
        self.days_around(now)
            .filter(|d| d.at <= now)
            .max_by_key(|d| (d.at, d.day))
            .unwrap_or_else(|| {
                // Unreachable for real time zones; stay total anyway.
                self.on(now.date_naive().pred_opt().unwrap_or(now.date_naive()))
            })
    }

    /// The first cleanup due strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> CleanupDue {
        self.days_around(now)
            .filter(|d| d.at > now)
            .min_by_key(|d| (d.at, d.day))
            .unwrap_or_else(|| self.on(now.date_naive().succ_opt().unwrap_or(now.date_naive())))
    }
}

/// Whether a cleanup claimed for `last_day` leaves `due` still to run.
pub fn is_unclaimed(last_day: Option<NaiveDate>, due: &CleanupDue) -> bool {
    last_day.is_none_or(|last| due.day > last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn clock(tz: &str, time: &str) -> CleanupClock {
        CleanupClock::parse(tz, time).unwrap()
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn the_cleanup_runs_at_the_local_time_of_the_organisation() {
        let c = clock("Europe/Berlin", "03:00");
        // 03:00 CET is 02:00 UTC in winter.
        assert_eq!(
            c.next_after(utc("2026-01-10T00:00:00Z")),
            CleanupDue {
                day: date("2026-01-10"),
                at: utc("2026-01-10T02:00:00Z")
            }
        );
        // 03:00 CEST is 01:00 UTC in summer.
        assert_eq!(
            c.next_after(utc("2026-07-10T00:00:00Z")).at,
            utc("2026-07-10T01:00:00Z")
        );
    }

    #[test]
    fn the_latest_due_cleanup_is_today_once_its_time_has_passed_else_yesterday() {
        let c = clock("America/New_York", "23:30");
        // 2026-03-02 23:30 EST = 2026-03-03 04:30 UTC.
        assert_eq!(
            c.latest_at_or_before(utc("2026-03-03T04:30:00Z")),
            CleanupDue {
                day: date("2026-03-02"),
                at: utc("2026-03-03T04:30:00Z")
            }
        );
        assert_eq!(
            c.latest_at_or_before(utc("2026-03-03T04:29:59Z")).day,
            date("2026-03-01")
        );
        assert_eq!(
            c.next_after(utc("2026-03-03T04:30:00Z")).day,
            date("2026-03-03")
        );
    }

    #[test]
    fn a_cleanup_time_in_the_spring_forward_gap_runs_shifted_by_the_gap() {
        // Europe/Berlin jumps from 02:00 to 03:00 on 2026-03-29.
        let c = clock("Europe/Berlin", "02:30");
        let due = c.next_after(utc("2026-03-28T23:00:00Z"));
        assert_eq!(due.day, date("2026-03-29"));
        // 03:30 CEST.
        assert_eq!(due.at, utc("2026-03-29T01:30:00Z"));
        // The days around it keep 02:30 local.
        assert_eq!(
            c.next_after(due.at).at,
            utc("2026-03-30T00:30:00Z"),
            "02:30 CEST the next day"
        );
        assert_eq!(
            c.latest_at_or_before(due.at - chrono::Duration::seconds(1))
                .at,
            utc("2026-03-28T01:30:00Z"),
            "02:30 CET the day before"
        );
    }

    #[test]
    fn a_cleanup_time_that_happens_twice_runs_once_at_the_first() {
        // Europe/Berlin goes back from 03:00 to 02:00 on 2026-10-25.
        let c = clock("Europe/Berlin", "02:30");
        let first = c.next_after(utc("2026-10-24T22:00:00Z"));
        assert_eq!(first.day, date("2026-10-25"));
        assert_eq!(first.at, utc("2026-10-25T00:30:00Z"), "02:30 CEST");
        // An hour later 02:30 shows again (CET): no second run that day.
        let second_showing = utc("2026-10-25T01:30:00Z");
        assert_eq!(c.latest_at_or_before(second_showing), first);
        assert_eq!(c.next_after(second_showing).day, date("2026-10-26"));
    }

    #[test]
    fn every_local_day_has_exactly_one_cleanup_across_a_year() {
        for (tz, time) in [
            ("Europe/Berlin", "02:30"),
            ("America/Sao_Paulo", "00:00"),
            ("Australia/Lord_Howe", "02:15"),
            ("Pacific/Apia", "12:00"),
            ("UTC", "03:00"),
        ] {
            let c = clock(tz, time);
            let mut t = utc("2026-01-01T00:00:00Z");
            let mut days = Vec::new();
            while t < utc("2027-01-01T00:00:00Z") {
                let due = c.next_after(t);
                assert!(due.at > t);
                assert_eq!(c.latest_at_or_before(due.at), due, "{tz} {due:?}");
                days.push(due.day);
                t = due.at;
            }
            assert!(
                days.windows(2).all(|w| w[1] == w[0].succ_opt().unwrap()),
                "{tz}: one cleanup per consecutive local day"
            );
            assert!((364..=366).contains(&days.len()), "{tz}: {}", days.len());
        }
    }

    #[test]
    fn after_downtime_only_the_latest_missed_day_is_unclaimed() {
        let c = clock("UTC", "03:00");
        let last_run = c.latest_at_or_before(utc("2026-05-01T12:00:00Z"));
        // Down for three days: the next pass sees one due cleanup, today's.
        let due = c.latest_at_or_before(utc("2026-05-04T09:00:00Z"));
        assert_eq!(due.day, date("2026-05-04"));
        assert!(is_unclaimed(Some(last_run.day), &due));
        // Once claimed, nothing more is due until tomorrow's time.
        assert!(!is_unclaimed(
            Some(due.day),
            &c.latest_at_or_before(utc("2026-05-04T23:59:00Z"))
        ));
        assert!(is_unclaimed(None, &due));
    }

    #[test]
    fn invalid_settings_give_no_clock() {
        assert!(CleanupClock::parse("Mars/Olympus", "03:00").is_none());
        assert!(CleanupClock::parse("UTC", "25:00").is_none());
        assert!(CleanupClock::parse("UTC", "3am").is_none());
    }
}
