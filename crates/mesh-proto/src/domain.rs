//! Parsed domain types shared by the services: parse, don't validate.
//!
//! Handlers turn raw request fields into these types at the edge; code behind the edge works on
//! values that cannot be invalid. A parse failure is a [`FieldViolation`] naming the field, and
//! [`invalid_argument`] turns violations into `INVALID_ARGUMENT` carrying
//! `google.rpc.BadRequest` details.

use std::fmt;

use tonic_types::{ErrorDetails, StatusExt};

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, e.g. `lines[3].quantity`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

impl From<FieldViolation> for tonic::Status {
    fn from(violation: FieldViolation) -> Self {
        invalid_argument(vec![violation])
    }
}

/// `INVALID_ARGUMENT` naming every violated field in the message and in `google.rpc.BadRequest`.
pub fn invalid_argument(violations: Vec<FieldViolation>) -> tonic::Status {
    let message = violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for violation in violations {
        details.add_bad_request_violation(violation.field, violation.description);
    }
    tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("invalid argument: {message}"),
        details,
    )
}

/// A stock keeping unit: 3 to 32 characters of `A-Z`, `0-9` and `-`, starting with a letter or
/// digit (e.g. `SKU-001`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sku(String);

impl Sku {
    /// Parses `raw` as the value of `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let ok = (3..=32).contains(&raw.len())
            && raw
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_uppercase() || b.is_ascii_digit() || (b == b'-' && i > 0));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldViolation::new(
                field,
                "must be 3 to 32 characters of A-Z, 0-9 and '-', not starting with '-'",
            ))
        }
    }

    /// The SKU text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Units of one line: 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quantity(u32);

impl Quantity {
    /// The largest quantity one line may carry.
    pub const MAX: u32 = 1000;

    /// Parses `raw` as the value of `field`.
    pub fn parse(field: &str, raw: u32) -> Result<Self, FieldViolation> {
        if (1..=Self::MAX).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(FieldViolation::new(field, "must be between 1 and 1000"))
        }
    }

    /// The number of units.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A client-chosen key that makes a request idempotent (an idempotency key or a reservation
/// id): 8 to 64 characters of letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey(String);

impl RequestKey {
    /// Parses `raw` as the value of `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let ok = (8..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldViolation::new(
                field,
                "must be 8 to 64 characters of letters, digits, '-' and '_'",
            ))
        }
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One parsed order or reservation line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Line {
    /// What.
    pub sku: Sku,
    /// How many.
    pub quantity: Quantity,
}

/// The most lines one order or reservation may have.
pub const MAX_LINES: usize = 50;

/// Parses the lines of a request (`field` is the repeated field's name): 1 to 50 lines, each SKU
/// at most once. Returns every violation found, not just the first. The lines come back sorted
/// by SKU, so equal requests compare equal.
pub fn parse_lines<'a>(
    field: &str,
    raw: impl ExactSizeIterator<Item = (&'a str, u32)>,
) -> Result<Vec<Line>, Vec<FieldViolation>> {
    if raw.len() == 0 {
        return Err(vec![FieldViolation::new(
            field,
            "at least one line is required",
        )]);
    }
    if raw.len() > MAX_LINES {
        return Err(vec![FieldViolation::new(
            field,
            "at most 50 lines are allowed",
        )]);
    }
    let mut lines = Vec::with_capacity(raw.len());
    let mut violations = Vec::new();
    for (i, (sku, quantity)) in raw.enumerate() {
        let sku = Sku::parse(&format!("{field}[{i}].sku"), sku);
        let quantity = Quantity::parse(&format!("{field}[{i}].quantity"), quantity);
        match (sku, quantity) {
            (Ok(sku), Ok(quantity)) => {
                if lines.iter().any(|l: &Line| l.sku == sku) {
                    violations.push(FieldViolation::new(
                        format!("{field}[{i}].sku"),
                        "each SKU may appear only once",
                    ));
                } else {
                    lines.push(Line { sku, quantity });
                }
            }
            (sku, quantity) => violations.extend(sku.err().into_iter().chain(quantity.err())),
        }
    }
    if violations.is_empty() {
        lines.sort();
        Ok(lines)
    } else {
        Err(violations)
    }
}

/// A canonical text of sorted lines (`SKU-001:2,SKU-003:1`), to recognise a replayed request.
pub fn lines_key(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| format!("{}:{}", l.sku, l.quantity.get()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A page size: 0 means `default`, else 1 to `max`.
pub fn parse_page_size(
    field: &str,
    raw: u32,
    default: u32,
    max: u32,
) -> Result<u32, FieldViolation> {
    match raw {
        0 => Ok(default),
        n if n <= max => Ok(n),
        _ => Err(FieldViolation::new(field, format!("must be at most {max}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_quantities_and_keys_parse_only_when_valid() {
        assert!(Sku::parse("sku", "SKU-001").is_ok());
        for bad in ["", "ab", "sku-001", "-SKU", "SKU 1", &"A".repeat(33)] {
            assert_eq!(
                Sku::parse("sku", bad).map_err(|v| v.field),
                Err("sku".into())
            );
        }
        assert!(Quantity::parse("q", 0).is_err());
        assert!(Quantity::parse("q", 1001).is_err());
        assert_eq!(Quantity::parse("q", 1000).map(Quantity::get), Ok(1000));
        assert!(RequestKey::parse("k", "short").is_err());
        assert!(RequestKey::parse("k", "order-2026-0001").is_ok());
    }

    #[test]
    fn lines_report_every_bad_field_by_path() {
        let raw = [("SKU-001", 1), ("bad", 0), ("SKU-001", 2)];
        let violations = parse_lines("lines", raw.into_iter()).expect_err("invalid");
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["lines[1].sku", "lines[1].quantity", "lines[2].sku"]
        );
    }
}
