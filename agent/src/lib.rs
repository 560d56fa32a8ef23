//! `tollgate-agent`: the Tollgate sidecar.
