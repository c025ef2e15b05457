//! Exit codes, documented in README: 0 ok, 1 other, 2 usage, 3 source or verification,
//! 4 content refused or build failed in the worker, 5 sandbox unavailable, 128+N signal.

use crate::job::JobError;
use crate::sandbox::Unavailable;
use crate::source::SourceError;

pub const OTHER: i32 = 1;
pub const USAGE: i32 = 2;
pub const SOURCE: i32 = 3;
pub const CONTENT: i32 = 4;
pub const SANDBOX: i32 = 5;

pub fn classify(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if cause.is::<SourceError>() {
            return SOURCE;
        }
        if cause.is::<Unavailable>() {
            return SANDBOX;
        }
        if let Some(j) = cause.downcast_ref::<JobError>() {
            return match j {
                JobError::Remote(_) => CONTENT,
                JobError::Source { .. } => SOURCE,
                JobError::Lost { .. } | JobError::Ship { .. } => OTHER,
            };
        }
    }
    OTHER
}
