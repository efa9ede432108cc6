//! Injected failures and request counting, so tests can check retries and call counts.

use crate::error::ApiError;
use crate::resource::{Kind, Verb};

/// A failure to inject: the next `times` requests that match every given criterion are
/// answered with `code` (as a Kubernetes `Status`) instead of being served.
///
/// ```
/// use skein_kube_fake::{Fault, Kind, Verb};
/// // The next two PATCHes of any Pod fail with 409 Conflict.
/// let fault = Fault::new(409).times(2).verb(Verb::Patch).kind(Kind::Pod);
/// # let _ = fault;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    code: u16,
    remaining: usize,
    verb: Option<Verb>,
    kind: Option<Kind>,
    namespace: Option<String>,
    name: Option<String>,
    path_prefix: Option<String>,
    delay: Option<std::time::Duration>,
}

impl Fault {
    /// Fails the next matching request with HTTP `code` (500, 409, 429, 503, 410, ...).
    pub fn new(code: u16) -> Self {
        Fault {
            code,
            remaining: 1,
            verb: None,
            kind: None,
            namespace: None,
            name: None,
            path_prefix: None,
            delay: None,
        }
    }

    /// Fails this many matching requests instead of one.
    pub fn times(mut self, times: usize) -> Self {
        self.remaining = times;
        self
    }

    /// Only requests with this verb.
    pub fn verb(mut self, verb: Verb) -> Self {
        self.verb = Some(verb);
        self
    }

    /// Only requests for this kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Only requests in this namespace.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// Only requests naming this object.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Only requests whose URL path starts with this prefix (e.g. `/api/v1/namespaces/a/pods`).
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = Some(prefix.to_owned());
        self
    }

    /// Holds each matching request this long before answering it (with the error): a
    /// request that hangs, as to an API server that stopped answering.
    pub fn delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// How many more requests this fault will fail.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    fn matches(&self, request: &RequestInfo<'_>) -> bool {
        self.remaining > 0
            && self.verb.is_none_or(|v| v == request.verb)
            && self.kind.is_none_or(|k| k == request.kind)
            && self.namespace.as_deref().is_none_or(|n| Some(n) == request.namespace)
            && self.name.as_deref().is_none_or(|n| Some(n) == request.name)
            && self.path_prefix.as_deref().is_none_or(|p| request.path.starts_with(p))
    }
}

/// What a fault is matched against.
pub(crate) struct RequestInfo<'a> {
    pub(crate) verb: Verb,
    pub(crate) kind: Kind,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) name: Option<&'a str>,
    pub(crate) path: &'a str,
}

/// Takes one use of the first matching fault and returns the error to answer with, and how
/// long to hold the request first.
pub(crate) fn take_fault(
    faults: &mut Vec<Fault>,
    request: &RequestInfo<'_>,
) -> Option<(ApiError, Option<std::time::Duration>)> {
    let index = faults.iter().position(|f| f.matches(request))?;
    let fault = &mut faults[index];
    fault.remaining -= 1;
    let error = ApiError::injected(fault.code);
    let delay = fault.delay;
    if fault.remaining == 0 {
        faults.remove(index);
    }
    Some((error, delay))
}
