//! Error classification shared by every layer.
//!
//! Whether a failure is retried, dead-lettered or reported as a user mistake is
//! decided from its class, never from its message text.

use std::fmt;

/// Who is responsible for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorDomain {
    /// The pipeline file, its parameters or the input data are wrong.
    User,
    /// A system flowgate talks to failed (network, server, permissions).
    External,
    /// A flowgate bug or an impossible state.
    Internal,
}

impl fmt::Display for ErrorDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorDomain::User => "user",
            ErrorDomain::External => "external",
            ErrorDomain::Internal => "internal",
        })
    }
}

/// Class of an error: its domain and whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorClass {
    pub domain: ErrorDomain,
    pub retriable: bool,
}

impl ErrorClass {
    pub const USER: ErrorClass = ErrorClass {
        domain: ErrorDomain::User,
        retriable: false,
    };
    pub const EXTERNAL_RETRIABLE: ErrorClass = ErrorClass {
        domain: ErrorDomain::External,
        retriable: true,
    };
    pub const EXTERNAL_FATAL: ErrorClass = ErrorClass {
        domain: ErrorDomain::External,
        retriable: false,
    };
    pub const INTERNAL: ErrorClass = ErrorClass {
        domain: ErrorDomain::Internal,
        retriable: false,
    };
}

/// Anything that knows its own class.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

/// What a failure means, where code must act on it: read from this, never from
/// the message text (a key or a path in a message can hold any word).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Nothing more specific than its class.
    #[default]
    Other,
    /// The source object was deleted between listing and reading it.
    SourceVanished,
    /// An encrypted object could not be decrypted (wrong identity, damaged file).
    Undecryptable,
    /// The server does not offer the operation (a server-side copy); do it another way.
    Unsupported,
    /// The run lost its claim (lease expired or taken over): it must stop writing.
    ClaimLost,
    /// The receiving side refused the input (a command's `reject` exit code):
    /// sending it again cannot help; it goes to the failed folder with the reason.
    Rejected,
}

/// An error that happened while a step worked: a message for people plus its class.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
pub struct StepError {
    pub message: String,
    pub class: ErrorClass,
    #[serde(default)]
    pub kind: ErrorKind,
}

impl StepError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        StepError {
            message: printable(crate::secret::redact(&message.into())),
            class,
            kind: ErrorKind::Other,
        }
    }
    /// The same error, with the meaning code acts on.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
    pub fn user(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::USER, message)
    }
    pub fn external(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::EXTERNAL_RETRIABLE, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::INTERNAL, message)
    }
    /// Append advice to the message (redacted and escaped like the message).
    pub fn context_suffix(mut self, suffix: &str) -> Self {
        self.message
            .push_str(&printable(crate::secret::redact(suffix)));
        self
    }

    /// Prefix the message with where it happened.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = printable(crate::secret::redact(&format!("{what}: {}", self.message)));
        self
    }
}

/// Control characters (an object key can hold any) escaped as `\u{7}`, so an
/// error prints as what it says, not as terminal commands; line breaks and tabs stay.
fn printable(text: String) -> String {
    let odd = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(odd) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if odd(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

impl Classify for StepError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

impl Classify for object_store::Error {
    fn class(&self) -> ErrorClass {
        use object_store::Error as E;
        match self {
            E::NotFound { .. } | E::InvalidPath { .. } | E::AlreadyExists { .. } => {
                ErrorClass::USER
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } | E::NotSupported { .. } => {
                ErrorClass::EXTERNAL_FATAL
            }
            E::Precondition { .. } | E::NotModified { .. } => ErrorClass::EXTERNAL_RETRIABLE,
            _ => ErrorClass::EXTERNAL_RETRIABLE,
        }
    }
}

impl From<object_store::Error> for StepError {
    fn from(e: object_store::Error) -> Self {
        StepError::new(e.class(), e.to_string())
    }
}

impl From<crate::state::StateError> for StepError {
    fn from(e: crate::state::StateError) -> Self {
        match e {
            crate::state::StateError::Fenced(_) => crate::lane::lost_error(),
            e => StepError::new(ErrorClass::EXTERNAL_RETRIABLE, format!("state store: {e}")),
        }
    }
}

/// An error with every cause in its chain (deduplicated), redacted: so a TLS
/// alert is not hidden behind "error sending request", nor an AWS service error
/// behind "dispatch failure".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    crate::secret::redact(&text)
}
