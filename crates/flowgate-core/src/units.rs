//! Durations, sizes and backoff ranges as people write them: `10m`, `16MiB`, `2s..2m`.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Parse `"90s"`, `"10m"`, `"1h30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. \"30s\", \"10m\", \"1h30m\"")
    })
}

/// Parse `"16MiB"`, `"10MB"`, `"512KiB"`, `"4096"` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. \"16MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "`{other}` is not a size unit; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Exponential backoff between `min` and `max`, with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    pub fn parse(text: &str) -> Result<Backoff, String> {
        let (a, b) = text.split_once("..").ok_or_else(|| {
            format!("`{text}` is not a backoff range; write \"min..max\", e.g. \"2s..2m\"")
        })?;
        let min = parse_duration(a)?;
        let max = parse_duration(b)?;
        if min > max {
            return Err(format!(
                "backoff `{text}`: the minimum is larger than the maximum"
            ));
        }
        Ok(Backoff { min, max })
    }

    /// Wait before attempt `attempt + 1` (attempt counts from 1): a random time in
    /// `[min, min * 2^(attempt-1)]`, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.max).max(self.min);
        let span = ceiling.saturating_sub(self.min).as_millis() as u64;
        let jitter = if span == 0 {
            0
        } else {
            rand::random_range(0..=span)
        };
        self.min + Duration::from_millis(jitter)
    }
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// `every 10m`: ticks aligned to the Unix epoch, so every worker agrees on them.
    Every(Duration),
    Cron {
        cron: Box<croner::Cron>,
        offset: chrono::FixedOffset,
    },
}

impl Schedule {
    pub fn parse(text: &str, timezone: Option<&str>) -> Result<Schedule, String> {
        let t = text.trim();
        if let Some(interval) = t.strip_prefix("every ") {
            let d = parse_duration(interval)?;
            if d < Duration::from_secs(1) {
                return Err("a schedule interval must be at least 1s".into());
            }
            return Ok(Schedule::Every(d));
        }
        let cron: croner::Cron = t.parse().map_err(|e| {
            format!("`{t}` is not a valid cron expression ({e}); write five fields (\"0 3 * * *\") or \"every 10m\"")
        })?;
        let offset = match timezone {
            None | Some("UTC") | Some("utc") | Some("Z") => {
                chrono::FixedOffset::east_opt(0).ok_or("bad offset")?
            }
            Some(tz) => tz.parse::<chrono::FixedOffset>().map_err(|_| {
                format!("`{tz}` is not a UTC offset; write e.g. \"+02:00\" or \"UTC\"")
            })?,
        };
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            offset,
        })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(d) => {
                let step = d.as_millis() as i64;
                let now = after.timestamp_millis();
                let next = (now.div_euclid(step) + 1) * step;
                DateTime::from_timestamp_millis(next)
            }
            Schedule::Cron { cron, offset } => cron
                .find_next_occurrence(&after.with_timezone(offset), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert!(parse_size("10 parsecs").is_err());
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
    }

    #[test]
    fn backoff_stays_in_range_and_grows() {
        let b = Backoff::parse("100ms..1s").unwrap();
        for attempt in 1..10 {
            let d = b.delay(attempt);
            assert!(d >= b.min && d <= b.max, "{d:?}");
        }
        assert!(Backoff::parse("2m..1s").is_err());
    }

    #[test]
    fn schedules() {
        let t = DateTime::parse_from_rfc3339("2026-01-01T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let every = Schedule::parse("every 10m", None).unwrap();
        assert_eq!(
            every.next_after(t).unwrap().to_rfc3339(),
            "2026-01-01T03:10:00+00:00"
        );
        let cron = Schedule::parse("0 3 * * *", None).unwrap();
        assert_eq!(
            cron.next_after(t).unwrap().to_rfc3339(),
            "2026-01-02T03:00:00+00:00"
        );
        assert!(Schedule::parse("61 * * * *", None).is_err());
    }
}
