//! Storage-stack topology.
