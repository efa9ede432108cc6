//! Tests only: checks that Skein's install artefacts — `manifests/` (the Helm chart
//! `charts/skein` rendered with its defaults) and the chart rendered with other values
//! (`tests/rendered/`, made by `scripts/render-manifests.sh`) — hold the invariants a CNI
//! install needs, parse as Skein's own types, and pass only flags the binaries accept.
//! Schema validation, `helm lint` and the render check are in `scripts/validate-install.sh`.
#![forbid(unsafe_code)]
