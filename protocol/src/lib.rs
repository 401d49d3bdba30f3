//! hafill wire format, sans-IO. The transfer issue fills this crate.
