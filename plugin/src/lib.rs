//! `tollgate`: a Kong external plugin server speaking Kong's MsgPack plugin protocol.
