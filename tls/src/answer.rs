//! Bounded reads of answers from peers. A peer — a host, the scheduler,
//! a registry — is untrusted until what it sent is checked: its answer
//! is read up to a limit chosen by the caller, never into memory whole,
//! and error bodies are cut to a line's length before they reach a log
//! or a user.

use serde::de::DeserializeOwned;

/// The most of an error body kept (the rest is not read).
pub const MAX_ERROR_TEXT: usize = 4 << 10;

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The body is over the caller's limit (said by its length, or
    /// found while reading it).
    #[error("the answer is over {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The connection failed while reading.
    #[error(transparent)]
    Read(#[from] reqwest::Error),
    /// The body is not the JSON expected.
    #[error("the answer is not what was expected: {0}")]
    Json(#[from] serde_json::Error),
}

/// The body of `answer`, at most `max` bytes.
pub async fn bytes(mut answer: reqwest::Response, max: usize) -> Result<Vec<u8>, AnswerError> {
    if answer.content_length().is_some_and(|n| n > max as u64) {
        return Err(AnswerError::TooLarge { max });
    }
    let mut out = Vec::new();
    while let Some(chunk) = answer.chunk().await? {
        if out.len() + chunk.len() > max {
            return Err(AnswerError::TooLarge { max });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The body of `answer` as JSON, at most `max` bytes of it.
pub async fn json<T: DeserializeOwned>(
    answer: reqwest::Response,
    max: usize,
) -> Result<T, AnswerError> {
    Ok(serde_json::from_slice(&bytes(answer, max).await?)?)
}

/// An error body as text: its first [`MAX_ERROR_TEXT`] bytes (lossy
/// UTF-8, control characters replaced), the rest not read. Never fails:
/// an unreadable body is empty.
pub async fn error_text(mut answer: reqwest::Response) -> String {
    let mut out = Vec::new();
    while out.len() < MAX_ERROR_TEXT {
        match answer.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_TEXT - out.len();
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out)
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect::<String>()
        .trim_end()
        .to_string()
}
