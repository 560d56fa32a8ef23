//! `tollgate-billing`: an OpenMeter-compatible central service.
