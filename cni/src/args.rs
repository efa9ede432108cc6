//! `CNI_ARGS`: `K=V;K=V` pairs. containerd builds them from a map, so the order varies;
//! unknown keys are tolerated whatever `IgnoreUnknown` says, because runtimes add keys over time.

use crate::error::CniError;

/// The parsed `CNI_ARGS`, with the Kubernetes keys the plugin uses pulled out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// Every pair in the order given.
    pub pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses `K=V;K=V`. Empty segments (a trailing `;`) are skipped; a segment without `=`
    /// or with an empty key is an invalid-environment error naming `CNI_ARGS`.
    pub fn parse(text: &str) -> Result<CniArgs, CniError> {
        let mut pairs = Vec::new();
        for segment in text.split(';') {
            if segment.is_empty() {
                continue;
            }
            match segment.split_once('=') {
                Some((key, value)) if !key.is_empty() => pairs.push((key.to_string(), value.to_string())),
                _ => {
                    return Err(CniError::invalid_env("CNI_ARGS", format!("{segment:?} is not a KEY=VALUE pair")));
                }
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The value of `key` (the last one wins if a key repeats); `None` when absent or empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    /// `K8S_POD_NAMESPACE`.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE")
    }

    /// `K8S_POD_NAME`.
    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME")
    }

    /// `K8S_POD_UID`.
    pub fn pod_uid(&self) -> Option<&str> {
        self.get("K8S_POD_UID")
    }

    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub fn infra_container_id(&self) -> Option<&str> {
        self.get("K8S_POD_INFRA_CONTAINER_ID")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerd_args_in_any_order() {
        let a = CniArgs::parse(
            "K8S_POD_UID=1234;IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_NAMESPACE=default;Extra=x=y",
        )
        .unwrap();
        assert_eq!(a.pod_namespace(), Some("default"));
        assert_eq!(a.pod_name(), Some("web-0"));
        assert_eq!(a.pod_uid(), Some("1234"));
        assert_eq!(a.infra_container_id(), Some("abc"));
        assert_eq!(a.get("Extra"), Some("x=y"));
        assert_eq!(a.get("Missing"), None);
    }

    #[test]
    fn tolerates_empty_and_rejects_garbage() {
        assert_eq!(CniArgs::parse("").unwrap().pairs.len(), 0);
        assert_eq!(CniArgs::parse("A=1;;B=;").unwrap().get("B"), None);
        let e = CniArgs::parse("A=1;garbage").unwrap_err();
        assert_eq!(e.code, crate::error::CODE_INVALID_ENVIRONMENT);
        assert!(e.msg.contains("CNI_ARGS") && e.msg.contains("garbage"));
        assert!(CniArgs::parse("=v").is_err());
    }
}
