//! Liveness: the one type for "connected / disconnected / lost / pending", its words and its wire form.
//!
//! Architecture invariant: this is the only place a liveness is spelled as a word (selectors, filters,
//! tables) or converted to and from `outpost.v1.Liveness`.

use std::fmt;
use std::str::FromStr;

use outpost_proto::v1 as pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// Never connected: a token is out, or the agent enrolled and has not opened its stream yet.
    Pending,
    Connected,
    /// Stream gone, still within the grace period.
    Disconnected,
    /// Grace period passed.
    Lost,
}

impl Liveness {
    pub const ALL: [Liveness; 4] = [Liveness::Pending, Liveness::Connected, Liveness::Disconnected, Liveness::Lost];

    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Pending => "pending",
            Liveness::Connected => "connected",
            Liveness::Disconnected => "disconnected",
            Liveness::Lost => "lost",
        }
    }

    /// `pending, connected, disconnected, lost`: for messages that list the valid words.
    pub fn words() -> String {
        Liveness::ALL.map(Liveness::as_str).join(", ")
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Liveness {
    type Err = String;
    fn from_str(s: &str) -> Result<Liveness, String> {
        Liveness::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a status; expected one of {}", Liveness::words()))
    }
}

impl From<Liveness> for pb::Liveness {
    fn from(l: Liveness) -> pb::Liveness {
        match l {
            Liveness::Pending => pb::Liveness::Pending,
            Liveness::Connected => pb::Liveness::Connected,
            Liveness::Disconnected => pb::Liveness::Disconnected,
            Liveness::Lost => pb::Liveness::Lost,
        }
    }
}

/// From the wire number; `Err` gives the number back (unspecified or unknown).
impl TryFrom<i32> for Liveness {
    type Error = i32;
    fn try_from(n: i32) -> Result<Liveness, i32> {
        match pb::Liveness::try_from(n) {
            Ok(pb::Liveness::Pending) => Ok(Liveness::Pending),
            Ok(pb::Liveness::Connected) => Ok(Liveness::Connected),
            Ok(pb::Liveness::Disconnected) => Ok(Liveness::Disconnected),
            Ok(pb::Liveness::Lost) => Ok(Liveness::Lost),
            _ => Err(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_wire_numbers_round_trip() {
        for l in Liveness::ALL {
            assert_eq!(l.as_str().parse::<Liveness>(), Ok(l));
            assert_eq!(Liveness::try_from(pb::Liveness::from(l) as i32), Ok(l));
        }
        assert_eq!(Liveness::try_from(0), Err(0));
        assert_eq!(Liveness::try_from(99), Err(99));
        assert!("gone".parse::<Liveness>().unwrap_err().contains("pending, connected, disconnected, lost"));
    }
}
