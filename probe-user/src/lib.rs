//! reclaimscope's agent, as a library so that the integration tests and the
//! fuzz targets drive the same code as the binary.

pub mod topology;
