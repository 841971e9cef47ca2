//! Numbers as people read them. Every human-facing output of Headroom
//! (tables, plans, explanations, charts, the monitor, the report page)
//! formats values through this crate: CPU in millicores below one core
//! (`250m`) and cores above (`1.5 cores`), memory with binary suffixes as
//! kubectl prints them (`237Mi`, `1.8Gi`), IO rates in `KiB/s`–`GiB/s`.
//! Machine outputs (JSON, CSV) keep base units (cores, bytes, bytes/s) and
//! never pass through here, except Kubernetes quantities ([`kubernetes`]).

/// The unit of a resource's values, as the wire names it
/// (`headroom_proto::resource::unit`: `cores`, `bytes`, `bytes/s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// CPU-seconds per second.
    Cores,
    /// Bytes (memory).
    Bytes,
    /// Bytes per second (disk and network IO).
    BytesPerSecond,
    /// Anything else (counts, seconds per second, losses): printed with
    /// three significant digits and this name after the number.
    Other(&'static str),
}

const KI: f64 = 1024.0;

/// Binary prefixes, as kubectl writes them, from the smallest.
const BINARY: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];

impl Unit {
    /// The unit named on the wire (`cores`, `bytes`, `bytes/s`); any other
    /// name (including an empty one) is [`Unit::Other`].
    pub fn from_name(name: &'static str) -> Self {
        match name {
            "cores" => Self::Cores,
            "bytes" => Self::Bytes,
            "bytes/s" => Self::BytesPerSecond,
            other => Self::Other(other),
        }
    }

    /// The same as [`Unit::from_name`] for a name that is not `'static`
    /// (one read from a message): unknown names become `Other("")`.
    pub fn parse(name: &str) -> Self {
        match name {
            "cores" => Self::Cores,
            "bytes" => Self::Bytes,
            "bytes/s" => Self::BytesPerSecond,
            _ => Self::Other(""),
        }
    }

    /// `value` (in the base unit) as a person reads it, e.g. `250m`,
    /// `1.5 cores`, `237Mi`, `1.8Gi`, `12 KiB/s`. Non-finite values are
    /// written as Rust writes them (`NaN`, `inf`).
    pub fn format(self, value: f64) -> String {
        if !value.is_finite() {
            return value.to_string();
        }
        match self {
            Self::Cores => {
                let milli = value * 1000.0;
                if milli.abs().round() < 1000.0 {
                    format!("{}m", milli.round() as i64)
                } else {
                    match digits(value).as_str() {
                        "1" => "1 core".to_string(),
                        d => format!("{d} cores"),
                    }
                }
            }
            Self::Bytes => {
                let (scaled, prefix) = binary(value);
                format!("{}{prefix}", digits(scaled))
            }
            Self::BytesPerSecond => {
                let (scaled, prefix) = binary(value);
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}B")
                };
                let bytes = if prefix.is_empty() { "B" } else { "" };
                format!("{} {prefix}{bytes}/s", digits(scaled))
            }
            Self::Other("") => digits(value),
            Self::Other(name) => format!("{} {name}", digits(value)),
        }
    }

    /// The scale an axis or a column of values up to `max` (base unit) is
    /// shown in: divide each value by [`Scale::divisor`] and title the axis
    /// with [`Scale::name`] (`millicores`, `cores`, `MiB`, `GiB/s`, …).
    pub fn scale(self, max: f64) -> Scale {
        let max = if max.is_finite() { max.abs() } else { 0.0 };
        match self {
            Self::Cores if max < 1.0 => Scale {
                divisor: 1e-3,
                name: "millicores".into(),
            },
            Self::Cores => Scale {
                divisor: 1.0,
                name: "cores".into(),
            },
            Self::Bytes | Self::BytesPerSecond => {
                let (divisor, prefix) = binary_divisor(max);
                let name = match (self, prefix) {
                    (Self::Bytes, "") => "bytes".to_string(),
                    (Self::Bytes, p) => format!("{p}B"),
                    (_, "") => "B/s".to_string(),
                    (_, p) => format!("{p}B/s"),
                };
                Scale { divisor, name }
            }
            Self::Other(name) => Scale {
                divisor: 1.0,
                name: name.to_string(),
            },
        }
    }
}

/// How a set of values is shown: divided by `divisor`, titled `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    /// Base units per shown unit (1,048,576 for MiB; 0.001 for millicores).
    pub divisor: f64,
    /// The shown unit's name, for axis titles and headers.
    pub name: String,
}

impl Scale {
    /// `value` (base unit) in this scale, with up to three significant
    /// digits and no unit: a tick label.
    pub fn label(&self, value: f64) -> String {
        digits(value / self.divisor)
    }
}

/// The largest binary prefix that leaves `value` at least 1, and the value
/// in it; a value that rounds to 1024 moves up a prefix.
fn binary(value: f64) -> (f64, &'static str) {
    let (divisor, prefix) = binary_divisor(value.abs());
    let scaled = value / divisor;
    // 1023.96 Mi prints as 1024Mi otherwise.
    if digits(scaled.abs()) == "1024" && prefix != BINARY[BINARY.len() - 1] {
        let i = BINARY.iter().position(|p| *p == prefix).unwrap_or(0);
        return (value / (divisor * KI), BINARY[i + 1]);
    }
    (scaled, prefix)
}

fn binary_divisor(max: f64) -> (f64, &'static str) {
    let mut divisor = 1.0;
    let mut prefix = BINARY[0];
    for p in &BINARY[1..] {
        if max >= divisor * KI {
            divisor *= KI;
            prefix = p;
        } else {
            break;
        }
    }
    (divisor, prefix)
}

/// A number with one decimal below 10 and none above (`1.8`, `237`,
/// `60`), trailing `.0` dropped; below 0.1 three significant digits.
fn digits(value: f64) -> String {
    let a = value.abs();
    let text = if a == 0.0 {
        "0".to_string()
    } else if a < 0.1 {
        format!(
            "{:.*}",
            (2 - a.log10().floor() as i32).max(0) as usize,
            value
        )
    } else if a < 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    };
    if text.contains('.') {
        let t = text.trim_end_matches('0').trim_end_matches('.');
        if t == "-0" { "0".into() } else { t.to_string() }
    } else if text == "-0" {
        "0".into()
    } else {
        text
    }
}

/// A quantity as Kubernetes writes it in `resources:`, rounded up (never
/// below the allocation): CPU in millicores (`250m`) or whole cores (`2`);
/// bytes in MiB or the largest binary suffix that is exact (`512Mi`,
/// `1536Mi`, `60Gi`, `2Ti`). Other units are written as bytes rounded up
/// to a MiB like memory. Negative values are written as `0`.
pub fn kubernetes(unit: Unit, value: f64) -> String {
    // A hair above an exact value (0.29 × 1000 = 290.00000000000006) is
    // float noise, not a need for one more unit.
    let up = |x: f64| {
        if x.is_finite() {
            (x * (1.0 - 1e-12)).ceil().max(0.0) as u64
        } else {
            0
        }
    };
    match unit {
        Unit::Cores => {
            let milli = up(value * 1000.0);
            if milli % 1000 == 0 {
                (milli / 1000).to_string()
            } else {
                format!("{milli}m")
            }
        }
        _ => {
            let mib = up(value / (KI * KI));
            if mib == 0 {
                return "0".to_string();
            }
            // Suffixes above Mi, as multiples of a MiB, largest first.
            [("Pi", 1u64 << 30), ("Ti", 1 << 20), ("Gi", 1 << 10)]
                .iter()
                .find(|(_, f)| mib % f == 0)
                .map_or_else(|| format!("{mib}Mi"), |(s, f)| format!("{}{s}", mib / f))
        }
    }
}

/// A span of time as people read it, in the largest unit it fills: `8 d`,
/// `1.5 d`, `1.5 h` (not `90 min`), `2 min`, `45 s`. Whole values print
/// without decimals, others with one.
pub fn duration(seconds: f64) -> String {
    let (value, unit) = if seconds >= 86_400.0 {
        (seconds / 86_400.0, "d")
    } else if seconds >= 3_600.0 {
        (seconds / 3_600.0, "h")
    } else if seconds >= 60.0 {
        (seconds / 60.0, "min")
    } else {
        (seconds, "s")
    };
    if (value - value.round()).abs() < 0.05 {
        format!("{:.0} {unit}", value.round())
    } else {
        format!("{value:.1} {unit}")
    }
}

/// A count with its noun, singular for one: `count(1, "task")` is
/// `1 task`, `count(3, "task")` is `3 tasks` (English plural by `s`).
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = KI * KI;
    const GIB: f64 = KI * MIB;

    #[test]
    fn values_read_as_kubectl_prints_them() {
        assert_eq!(Unit::Bytes.format(237.0 * MIB), "237Mi");
        assert_eq!(Unit::Bytes.format(248_153_481.264_6), "237Mi");
        assert_eq!(Unit::Bytes.format(1.8 * GIB), "1.8Gi");
        assert_eq!(Unit::Bytes.format(60.0 * GIB), "60Gi");
        assert_eq!(Unit::Bytes.format(1023.99 * MIB), "1Gi");
        assert_eq!(Unit::Bytes.format(512.0), "512");
        assert_eq!(Unit::Bytes.format(0.0), "0");
        assert_eq!(Unit::Cores.format(0.25), "250m");
        assert_eq!(Unit::Cores.format(0.0004), "0m");
        assert_eq!(Unit::Cores.format(1.5), "1.5 cores");
        assert_eq!(Unit::Cores.format(0.9996), "1 core");
        assert_eq!(Unit::Cores.format(12.34), "12 cores");
        assert_eq!(Unit::BytesPerSecond.format(12.4 * KI), "12 KiB/s");
        assert_eq!(Unit::BytesPerSecond.format(3.2 * MIB), "3.2 MiB/s");
        assert_eq!(Unit::BytesPerSecond.format(100.0), "100 B/s");
        assert_eq!(Unit::Other("kills").format(3.0), "3 kills");
        assert_eq!(Unit::Other("").format(0.01312), "0.0131");
        assert_eq!(Unit::Bytes.format(f64::NAN), "NaN");
    }

    #[test]
    fn a_scale_names_the_unit_its_largest_value_needs() {
        let s = Unit::Bytes.scale(250_000_000.0);
        assert_eq!(s.name, "MiB");
        assert_eq!(s.label(250_000_000.0), "238");
        assert_eq!(Unit::Bytes.scale(3.0 * GIB).name, "GiB");
        assert_eq!(Unit::Cores.scale(0.5).name, "millicores");
        assert_eq!(Unit::Cores.scale(0.5).label(0.25), "250");
        assert_eq!(Unit::Cores.scale(4.0).name, "cores");
        assert_eq!(Unit::BytesPerSecond.scale(2.0 * MIB).name, "MiB/s");
        assert_eq!(Unit::BytesPerSecond.scale(10.0).name, "B/s");
        assert_eq!(Unit::Other("pinball loss").scale(1.0).name, "pinball loss");
    }

    #[test]
    fn kubernetes_quantities_take_the_largest_exact_suffix_and_round_up() {
        let q = |u, v| kubernetes(u, v);
        assert_eq!(q(Unit::Bytes, 60.0 * GIB), "60Gi");
        assert_eq!(q(Unit::Bytes, 1.5 * GIB), "1536Mi");
        assert_eq!(q(Unit::Bytes, 512.0 * MIB), "512Mi");
        assert_eq!(q(Unit::Bytes, 2048.0 * GIB), "2Ti");
        assert_eq!(q(Unit::Bytes, 512.0 * MIB + 1.0), "513Mi");
        assert_eq!(q(Unit::Bytes, 0.0), "0");
        assert_eq!(q(Unit::Bytes, -5.0), "0");
        assert_eq!(q(Unit::Cores, 0.25), "250m");
        assert_eq!(q(Unit::Cores, 0.29), "290m");
        assert_eq!(q(Unit::Cores, 2.0), "2");
        assert_eq!(q(Unit::Cores, 2.0004), "2001m");
        assert_eq!(q(Unit::Cores, f64::NAN), "0");
    }

    proptest::proptest! {
        #[test]
        fn a_kubernetes_quantity_never_falls_below_the_value(v in 0.0f64..1e15) {
            let text = kubernetes(Unit::Bytes, v);
            let (n, s) = text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
            let factor = match s { "" => 1.0, "Mi" => MIB, "Gi" => GIB, "Ti" => GIB * KI, "Pi" => GIB * KI * KI, _ => unreachable!() };
            proptest::prop_assert!(n.parse::<f64>().unwrap() * factor >= v * (1.0 - 1e-9));
        }

        #[test]
        fn a_formatted_value_is_within_five_percent(v in 1.0f64..1e15) {
            let text = Unit::Bytes.format(v);
            let i = text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len());
            let (n, s) = text.split_at(i);
            let p = BINARY.iter().position(|b| *b == s).unwrap() as i32;
            let back = n.parse::<f64>().unwrap() * KI.powi(p);
            proptest::prop_assert!((back - v).abs() <= 0.05 * v, "{v} -> {text}");
        }
    }

    #[test]
    fn durations_read_in_their_largest_unit() {
        assert_eq!(duration(8.0 * 86_400.0), "8 d");
        assert_eq!(duration(29.5 * 86_400.0), "29.5 d");
        assert_eq!(duration(29.0 * 86_400.0 + 3_600.0), "29 d");
        assert_eq!(duration(1.5 * 86_400.0), "1.5 d");
        assert_eq!(duration(5_400.0), "1.5 h");
        assert_eq!(duration(120.0), "2 min");
        assert_eq!(duration(45.0), "45 s");
    }

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(0, "task"), "0 tasks");
        assert_eq!(count(1, "task"), "1 task");
        assert_eq!(count(2, "resize"), "2 resizes");
    }
}
