//! Small helpers for messages.

/// Quote a user value for a message, shortening very long ones (annotation values and URLs
/// may be large).
pub fn quote(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}...")
    }
}
