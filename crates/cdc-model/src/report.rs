//! One way to render an error with its whole chain of causes, for log lines and wire messages.

use std::fmt;

/// Displays an error followed by each of its sources, separated by `: `, on one line, so that a
/// log line names the root cause: `ErrorReport(&err)` renders `outer: middle: root`.
///
/// Use it at every log site (`warn!(error = %ErrorReport(&err), "...")`) instead of `%err`,
/// which shows only the outermost message.
#[derive(Clone, Copy)]
pub struct ErrorReport<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorReport;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn renders_the_whole_chain() {
        let err = Outer(Middle(std::io::Error::other("root cause")));
        assert_eq!(ErrorReport(&err).to_string(), "outer: middle: root cause");
        let leaf = std::io::Error::other("alone");
        assert_eq!(ErrorReport(&leaf).to_string(), "alone");
    }
}
