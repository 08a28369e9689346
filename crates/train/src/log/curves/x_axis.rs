//! [`XAxis`]: what the x axis of every panel measures (`--x step|tokens|time`), with the JSONL
//! field it reads and the words the picture uses for it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// What the x axis of every panel measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XAxis {
    /// Optimizer steps.
    #[default]
    Step,
    /// Tokens seen since the start of the run.
    Tokens,
    /// Seconds since the start of the run (`elapsed_s`; older metrics files lack it).
    Time,
}

impl XAxis {
    /// The axis description drawn under each panel.
    pub fn label(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Tokens => "tokens seen",
            XAxis::Time => "elapsed (s)",
        }
    }

    /// The JSONL field the axis reads.
    pub(super) fn field(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Tokens => "tokens_seen",
            XAxis::Time => "elapsed_s",
        }
    }

    /// The axis in the picture's title ("training curves by ...").
    pub(super) fn noun(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Tokens => "tokens seen",
            XAxis::Time => "elapsed time",
        }
    }
}

impl fmt::Display for XAxis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XAxis::Step => "step",
            XAxis::Tokens => "tokens",
            XAxis::Time => "time",
        })
    }
}

impl FromStr for XAxis {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "step" | "steps" => Ok(XAxis::Step),
            "tokens" | "token" => Ok(XAxis::Tokens),
            "time" | "elapsed" => Ok(XAxis::Time),
            other => Err(Error::config(
                "x",
                format!("`{other}` is not an x axis (supported: step, tokens, time)"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_by_name_and_unknown_axes_are_errors() {
        assert_eq!("tokens".parse::<XAxis>().expect("parse"), XAxis::Tokens);
        let err = "epoch".parse::<XAxis>().expect_err("epoch").to_string();
        assert!(err.contains("epoch") && err.contains("step, tokens, time"));
    }
}
